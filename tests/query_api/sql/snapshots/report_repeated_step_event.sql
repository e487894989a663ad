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
    SELECT [countIf(level >= 1),
        countIf(level >= 2),
        countIf(level >= 3)] AS reach,
       [[0, 0],
        quantilesExactIf(0.5, 0.9)(re[2] - st[2], st[2] >= 0),
        quantilesExactIf(0.5, 0.9)(re[3] - st[3], st[3] >= 0)] AS q_start,
       [avgIf(0, st[1] >= 0),
        avgIf(re[2] - st[2], st[2] >= 0),
        avgIf(re[3] - st[3], st[3] >= 0)] AS avg_start,
       [[0, 0],
        q_start[2],
        quantilesExactIf(0.5, 0.9)(re[3] - pr[3], st[3] >= 0)] AS q_previous,
       [avgIf(0, st[1] >= 0),
        avg_start[2],
        avgIf(re[3] - pr[3], st[3] >= 0)] AS avg_previous,
       [countIf(level = 1 AND {p9:Int64} <= open_until),
        countIf(level = 2 AND {p9:Int64} <= open_until),
        0] AS waiting
    FROM (
    SELECT visitor_id, st, re, pr, arrayLastIndex(x -> x >= 0, st) AS level, st[level] + {p0:Int64} AS open_until
    FROM (SELECT visitor_id,
       arrayMap(x -> if(bitAnd(x, 63) = 0, x, -1), e) AS s0,
       arrayFill(x -> x >= 0, s0) AS f0, f0 AS g0,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 1 AND a >= 0 AND x <= a + 5529600001, a, -1), e, f0) AS s1,
       arrayFill(x -> x >= 0, s1) AS f1,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 2 AND a >= 0 AND x <= a + 5529600002, a, -1), e, f1) AS s2,
       arrayLastIndex(x -> x >= 0, s0) AS i0,
       arrayLastIndex(x -> x >= 0, s1) AS i1,
       arrayLastIndex(x -> x >= 0, s2) AS i2,
       [if(i0 > 0, bitShiftRight(s0[i0], 6) + {p4:Int64}, -1), if(i1 > 0, bitShiftRight(s1[i1], 6) + {p4:Int64}, -1), if(i2 > 0, bitShiftRight(s2[i2], 6) + {p4:Int64}, -1)] AS st,
       [if(i0 > 0, bitShiftRight(e[i0], 6) + {p4:Int64}, -1), if(i1 > 0, bitShiftRight(e[i1], 6) + {p4:Int64}, -1), if(i2 > 0, bitShiftRight(e[i2], 6) + {p4:Int64}, -1)] AS re,
       [if(i0 > 0, bitShiftRight(e[i0], 6) + {p4:Int64}, -1), if(i1 > 0, bitShiftRight(e[arrayLastIndex(x -> x >= 0, arraySlice(s0, 1, i1))], 6) + {p4:Int64}, -1), if(i2 > 0, bitShiftRight(e[arrayLastIndex(x -> x >= 0, arraySlice(s1, 1, i2))], 6) + {p4:Int64}, -1)] AS pr
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
))
    WHERE level > 0
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
