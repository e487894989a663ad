SELECT step,
       reach[step] AS entities,
       q_start[step][1] AS median_ms,
       q_start[step][2] AS p90_ms,
       avg_start[step] AS avg_ms,
       q_previous[step][1] AS median_from_previous_ms,
       q_previous[step][2] AS p90_from_previous_ms,
       avg_previous[step] AS avg_from_previous_ms,
       waiting[step] AS in_progress
FROM (
    SELECT [countIf(st1 >= 0),
        countIf(st2 >= 0),
        countIf(st3 >= 0)] AS reach,
       [[0, 0],
        quantilesExactIf(0.5, 0.9)(re2 - st2, st2 >= 0),
        quantilesExactIf(0.5, 0.9)(re3 - st3, st3 >= 0)] AS q_start,
       [avgIf(0, st1 >= 0),
        avgIf(re2 - st2, st2 >= 0),
        avgIf(re3 - st3, st3 >= 0)] AS avg_start,
       [[0, 0],
        q_start[2],
        quantilesExactIf(0.5, 0.9)(re3 - pr3, st3 >= 0)] AS q_previous,
       [avgIf(0, st1 >= 0),
        avg_start[2],
        avgIf(re3 - pr3, st3 >= 0)] AS avg_previous,
       [countIf(st1 >= 0 AND st2 < 0 AND {p10:Int64} <= least(st1 + {p0:Int64}, re1 + 600000)),
        countIf(st2 >= 0 AND st3 < 0 AND {p10:Int64} <= least(st2 + {p0:Int64}, re2 + 3600000)),
        0] AS waiting
    FROM (SELECT visitor_id,
       arrayMap((x, g) -> x - g, e, arrayCumSumNonNegative(arrayMap((x, d) -> if(bitAnd(x, 63) = 0, -9223372036854775807, d), e, arrayDifference(e)))) AS f0, f0 AS g0,
       arrayMap((x, a, b) -> if(bitAnd(x, 63) = 1 AND bitAnd(a, 63) = 0 AND x <= a + 5529600001 AND x <= b + 38400001, a, -1), e, f0, g0) AS s1,
       arrayFill(x -> x >= 0, s1) AS f1,
       arrayFill(x -> x >= 0, arrayMap((x, a) -> if(a >= 0, x, -1), e, s1)) AS g1,
       arrayMap((x, a, b) -> if(bitAnd(x, 63) = 2 AND a >= 0 AND x <= a + 5529600002 AND x <= b + 230400001, a, -1), e, f1, g1) AS s2,
       arrayLastIndex(x -> bitAnd(x, 63) = 0, e) AS i0,
       arrayLastIndex(x -> x >= 0, s1) AS i1,
       arrayLastIndex(x -> x >= 0, s2) AS i2,
       if(i0 > 0, bitShiftRight(e[i0], 6) + {p5:Int64}, -1) AS st1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p5:Int64}, -1) AS re1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p5:Int64}, -1) AS pr1,
       if(i1 > 0, bitShiftRight(s1[i1], 6) + {p5:Int64}, -1) AS st2, if(i1 > 0, bitShiftRight(e[i1], 6) + {p5:Int64}, -1) AS re2, if(i1 > 0, bitShiftRight(s1[i1], 6) + {p5:Int64}, -1) AS pr2,
       if(i2 > 0, bitShiftRight(s2[i2], 6) + {p5:Int64}, -1) AS st3, if(i2 > 0, bitShiftRight(e[i2], 6) + {p5:Int64}, -1) AS re3, if(i2 > 0, bitShiftRight(e[arrayLastIndex(x -> x >= 0, arraySlice(s1, 1, i2))], 6) + {p5:Int64}, -1) AS pr3,
       [st1, st2, st3] AS st, [re1, re2, re3] AS re, [pr1, pr2, pr3] AS pr
FROM (
    SELECT visitor_id, arraySort(groupArray(packed)) AS e
    FROM (
    SELECT visitor_id AS visitor_id, multiIf(((event = {p1:String}) OR (event = {p2:String})), 0, (event = {p3:String}), 1, (event = {p4:String}), 2, -1) AS step, (toUnixTimestamp64Milli(timestamp) - {p5:Int64}) * 64 + step AS packed
    FROM events
    WHERE project_id = {p6:String}
      AND timestamp >= {p7:DateTime64(3, 'UTC')}
      AND timestamp < {p8:DateTime64(3, 'UTC')}
      AND event IN {p9:Array(String)}
    )
    WHERE step >= 0
    GROUP BY visitor_id
)
    )
)
ARRAY JOIN arrayEnumerate(reach) AS step
ORDER BY step

-- p0 = 86400000
-- p1 = 'page_view'
-- p2 = 'landing'
-- p3 = 'add_to_cart'
-- p4 = 'purchase'
-- p5 = 1735689600000
-- p6 = 'shop'
-- p7 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p8 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p9 = ['add_to_cart', 'landing', 'page_view', 'purchase']
-- p10 = 1738368000000
