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
    SELECT [sum(attempts[1]),
        sum(attempts[2])] AS reach,
       [[0, 0],
        quantilesExactIf(0.5, 0.9)(re2 - st2, st2 >= 0)] AS q_start,
       [avgIf(0, st1 >= 0),
        avgIf(re2 - st2, st2 >= 0)] AS avg_start,
       [[0, 0],
        q_start[2]] AS q_previous,
       [avgIf(0, st1 >= 0),
        avg_start[2]] AS avg_previous,
       [countIf(st1 >= 0 AND st2 != st1 AND {p8:Int64} <= least(st1 + {p0:Int64}, re1 + 60000)),
        0] AS waiting
    FROM (SELECT visitor_id,
       arrayMap((x, g) -> x - g, e, arrayCumSumNonNegative(arrayMap((x, d) -> if(bitAnd(x, 63) = 0, -9223372036854775807, d), e, arrayDifference(e)))) AS f0, f0 AS g0,
       arrayMap((x, a, b) -> if(bitAnd(x, 63) = 1 AND bitAnd(a, 63) = 0 AND x <= a + 5529600001 AND x <= b + 3840001, a, -1), e, f0, g0) AS s1,
       [length(arrayDistinct(arrayFilter(x -> bitAnd(x, 63) = 0, e))), length(arrayDistinct(arrayFilter(x -> x >= 0, s1)))] AS attempts,
       arrayLastIndex(x -> bitAnd(x, 63) = 0, e) AS i0,
       arrayLastIndex(x -> x >= 0, s1) AS i1,
       if(i0 > 0, bitShiftRight(e[i0], 6) + {p3:Int64}, -1) AS st1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p3:Int64}, -1) AS re1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p3:Int64}, -1) AS pr1,
       if(i1 > 0, bitShiftRight(s1[i1], 6) + {p3:Int64}, -1) AS st2, if(i1 > 0, bitShiftRight(e[i1], 6) + {p3:Int64}, -1) AS re2, if(i1 > 0, bitShiftRight(s1[i1], 6) + {p3:Int64}, -1) AS pr2,
       [st1, st2] AS st, [re1, re2] AS re, [pr1, pr2] AS pr
FROM (
    SELECT visitor_id, arraySort(groupArray(packed)) AS e
    FROM (
    SELECT visitor_id AS visitor_id, multiIf((event = {p1:String}), 0, (event = {p2:String}), 1, -1) AS step, (toUnixTimestamp64Milli(timestamp) - {p3:Int64}) * 64 + step AS packed
    FROM events
    WHERE project_id = {p4:String}
      AND timestamp >= {p5:DateTime64(3, 'UTC')}
      AND timestamp < {p6:DateTime64(3, 'UTC')}
      AND event IN {p7:Array(String)}
    )
    WHERE step >= 0
    GROUP BY visitor_id
)
    )
)
ARRAY JOIN arrayEnumerate(reach) AS step
ORDER BY step

-- p0 = 86400000
-- p1 = 'a'
-- p2 = 'b'
-- p3 = 1735689600000
-- p4 = 'shop'
-- p5 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p6 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p7 = ['a', 'b']
-- p8 = 1738368000000
