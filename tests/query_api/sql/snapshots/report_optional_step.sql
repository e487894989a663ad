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
       [countIf(level = 1 AND {p13:Int64} <= open_until),
        countIf(level = 2 AND {p13:Int64} <= open_until),
        0] AS waiting
    FROM (
    SELECT visitor_id, st, re, pr, arrayLastIndex(x -> x >= 0, st) AS level, least(st[level] + {p0:Int64}, re[level] + {p1:Array(Int64)}[level]) AS open_until
    FROM (SELECT visitor_id,
       arrayMap(s -> s.1, slots) AS st,
       arrayMap(s -> s.2, slots) AS re,
       arrayMap(s -> s.3, slots) AS pr
FROM (
    SELECT visitor_id, arrayFold((acc, x) -> if(x.2 > 0, acc, if(x.2 = 0, arrayMap((s, j) -> if(j = 1, (x.1, x.1, x.1), s), acc, range(1, 4)), arrayMap(src -> if(src > 0, arrayMap((s, j) -> if(j = 1 - x.2, (acc[src].1, x.1, acc[src].2), s), acc, range(1, 4)), acc), [arrayReverseSort(j -> (acc[j].1, j), arrayFilter(j -> acc[j].1 >= 0 AND x.1 <= acc[j].1 + {p5:Int64} AND x.1 <= acc[j].2 + {p6:Array(Int64)}[1 - x.2], {p7:Array(Array(Int64))}[1 - x.2]))[1]])[1])), arrayMap(k -> (toInt64(bitShiftRight(k, 198)) + {p8:Int64}, toInt64(bitAnd(k, 18446744073709551615)) - 4294967296), arraySort(groupArray(bitOr(bitOr(bitShiftLeft(toUInt256((ts - {p8:Int64}) * 64 + rank + 1), 192), bitShiftLeft(toUInt256(reinterpretAsUInt128(eid)), 64)), toUInt256(kind + 4294967296))))), arrayMap(i -> (toInt64(-1), toInt64(-1), toInt64(-1)), range(3))) AS slots
    FROM (
    SELECT visitor_id AS visitor_id, toUnixTimestamp64Milli(timestamp) AS ts, event_id AS eid,
           arrayFilter(i -> [(event = {p2:String}), (event = {p3:String}), (event = {p4:String})][i + 1], range(3)) AS matched,
           if(matched[1] >= 3, -1, matched[1]) AS rank,
           arrayJoin(matched) AS idx,
           if(idx >= 3, toInt64(idx) - 3 + 1, -toInt64(idx)) AS kind
    FROM events
    WHERE project_id = {p9:String}
      AND timestamp >= {p10:DateTime64(3, 'UTC')}
      AND timestamp < {p11:DateTime64(3, 'UTC')}
      AND event IN {p12:Array(String)}
    )
    GROUP BY visitor_id
))
    WHERE level > 0
    )
)
ARRAY JOIN arrayEnumerate(reach) AS step
ORDER BY step

-- p0 = 86400000
-- p1 = [4611686018427387904, 3600000, 4611686018427387904]
-- p2 = 'page_view'
-- p3 = 'add_to_cart'
-- p4 = 'purchase'
-- p5 = 86400000
-- p6 = [4611686018427387904, 4611686018427387904, 3600000]
-- p7 = [[], [1], [2, 1]]
-- p8 = 1735689600000
-- p9 = 'shop'
-- p10 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p11 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p12 = ['add_to_cart', 'page_view', 'purchase']
-- p13 = 1738368000000
