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
       [countIf(st1 >= 0 AND st2 < 0 AND {p9:Int64} <= st1 + {p0:Int64}),
        countIf(st2 >= 0 AND st3 < 0 AND {p9:Int64} <= st2 + {p0:Int64}),
        0] AS waiting
    FROM (SELECT visitor_id,
       arrayMap((x, g) -> x - g, e, arrayCumSumNonNegative(arrayMap((x, d) -> if(bitAnd(x, 63) = 0, -9223372036854775807, d), e, arrayDifference(e)))) AS f0, f0 AS g0,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 1 AND bitAnd(a, 63) = 0 AND x <= a + 5529600001, a, -1), e, f0) AS s1,
       arrayFill(x -> x >= 0, s1) AS f1,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 2 AND a >= 0 AND x <= a + 5529600002, a, -1), e, f1) AS s2,
       arrayLastIndex(x -> bitAnd(x, 63) = 0, e) AS i0,
       arrayLastIndex(x -> x >= 0, s1) AS i1,
       arrayLastIndex(x -> x >= 0, s2) AS i2,
       if(i0 > 0, bitShiftRight(e[i0], 6) + {p4:Int64}, -1) AS st1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p4:Int64}, -1) AS re1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p4:Int64}, -1) AS pr1,
       if(i1 > 0, bitShiftRight(s1[i1], 6) + {p4:Int64}, -1) AS st2, if(i1 > 0, bitShiftRight(e[i1], 6) + {p4:Int64}, -1) AS re2, if(i1 > 0, bitShiftRight(s1[i1], 6) + {p4:Int64}, -1) AS pr2,
       if(i2 > 0, bitShiftRight(s2[i2], 6) + {p4:Int64}, -1) AS st3, if(i2 > 0, bitShiftRight(e[i2], 6) + {p4:Int64}, -1) AS re3, if(i2 > 0, bitShiftRight(e[arrayLastIndex(x -> x >= 0, arraySlice(s1, 1, i2))], 6) + {p4:Int64}, -1) AS pr3,
       [st1, st2, st3] AS st, [re1, re2, re3] AS re, [pr1, pr2, pr3] AS pr
FROM (
    SELECT visitor_id,
           arrayMap(k -> toInt64(bitShiftRight(k, 198)) * 64 + 63 - toInt64(bitAnd(k, 63)),
                    arraySort(groupArray(bitOr(bitOr(bitShiftLeft(toUInt256(rel * 64 + matched[1]), 192), bitShiftLeft(toUInt256(reinterpretAsUInt128(eid)), 64)), toUInt256(63 - idx)) AS key))) AS e
    FROM (
    SELECT visitor_id AS visitor_id, (toUnixTimestamp64Milli(timestamp) - {p4:Int64}) AS rel, event_id AS eid, arrayFilter(i -> [(event = {p1:String}), (event = {p2:String}), (event = {p3:String})][i + 1], range(3)) AS matched, arrayJoin(matched) AS idx
    FROM events
    WHERE project_id = {p5:String}
      AND timestamp >= {p6:DateTime64(3, 'UTC')}
      AND timestamp < {p7:DateTime64(3, 'UTC')}
      AND event IN {p8:Array(String)}
    )
    GROUP BY visitor_id
)
    )
)
ARRAY JOIN arrayEnumerate(reach) AS step
ORDER BY step

-- p0 = 86400000
-- p1 = 'page_view'
-- p2 = 'page_view'
-- p3 = 'purchase'
-- p4 = 1735689600000
-- p5 = 'shop'
-- p6 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p7 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p8 = ['page_view', 'purchase']
-- p9 = 1738368000000
