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
       [countIf(level = 1 AND {p19:Int64} <= open_until),
        countIf(level = 2 AND {p19:Int64} <= open_until),
        0] AS waiting
    FROM (
    SELECT visitor_id, st, re, pr, arrayLastIndex(x -> x >= 0, st) AS level, st[level] + {p0:Int64} AS open_until
    FROM (SELECT visitor_id,
       arrayMap(s -> s.1, slots) AS st,
       arrayMap(s -> s.2, slots) AS re,
       arrayMap(s -> s.3, slots) AS pr
FROM (
    SELECT visitor_id, arrayFold((acc, x) -> if(x.2 > 0, arrayMap(s -> if(s.1 >= 0 AND (arrayLastIndex(t -> t.1 = s.1, acc) - 1) >= {p8:Array(Int64)}[x.2] AND (arrayLastIndex(t -> t.1 = s.1, acc) - 1) < {p9:Array(Int64)}[x.2], (toInt64(-1), toInt64(-1), toInt64(-1)), s), acc), if(x.2 = 0, arrayMap((s, j) -> if(j = 1, (x.1, x.1, x.1), s), acc, range(1, 4)), if(acc[-x.2].1 >= 0 AND x.1 <= acc[-x.2].1 + {p7:Int64}, arrayMap((s, j) -> if(j = 1 - x.2, (acc[-x.2].1, x.1, acc[-x.2].2), s), acc, range(1, 4)), acc))), arrayMap(k -> (toInt64(bitShiftRight(k, 198)) + {p10:Int64}, toInt64(bitAnd(k, 18446744073709551615)) - 4294967296), arraySort(groupArray(bitOr(bitOr(bitShiftLeft(toUInt256((ts - {p10:Int64}) * 64 + rank + 1), 192), bitShiftLeft(toUInt256(reinterpretAsUInt128(eid)), 64)), toUInt256(kind + 4294967296))))), arrayMap(i -> (toInt64(-1), toInt64(-1), toInt64(-1)), range(3))) AS slots
    FROM (
    SELECT if(ids.identified != '', ids.identified, events.visitor_id) AS visitor_id, toUnixTimestamp64Milli(timestamp) AS ts, event_id AS eid,
           arrayFilter(i -> [(event = {p1:String}), (event = {p2:String} AND ifNull(toFloat64OrNull(properties[{p3:String}]) > {p4:Float64}, 0)), (event = {p5:String}), (event = {p6:String})][i + 1], range(4)) AS matched,
           if(matched[1] >= 3, -1, matched[1]) AS rank,
           arrayJoin(matched) AS idx,
           if(idx >= 3, toInt64(idx) - 3 + 1, -toInt64(idx)) AS kind
    FROM events
    LEFT JOIN (
        SELECT visitor_id, argMax(user_id, timestamp) AS identified
        FROM events
        WHERE project_id = {p11:String} AND user_id != ''
        GROUP BY visitor_id
    ) AS ids ON ids.visitor_id = events.visitor_id
    WHERE project_id = {p11:String}
      AND timestamp >= {p12:DateTime64(3, 'UTC')}
      AND timestamp < {p13:DateTime64(3, 'UTC')}
      AND if(ids.identified != '', ids.identified, events.visitor_id) IN (
        SELECT DISTINCT if(ids.identified != '', ids.identified, events.visitor_id)
        FROM events
    LEFT JOIN (
        SELECT visitor_id, argMax(user_id, timestamp) AS identified
        FROM events
        WHERE project_id = {p11:String} AND user_id != ''
        GROUP BY visitor_id
    ) AS ids ON ids.visitor_id = events.visitor_id
        WHERE events.project_id = {p11:String}
          AND events.timestamp >= {p16:DateTime64(3, 'UTC')}
          AND events.timestamp < {p17:DateTime64(3, 'UTC')}
          AND (properties[{p14:String}] = {p15:String})
    )
      AND event IN {p18:Array(String)}
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
-- p2 = 'add_to_cart'
-- p3 = 'price'
-- p4 = 10.0
-- p5 = 'purchase'
-- p6 = 'refund'
-- p7 = 86400000
-- p8 = [0]
-- p9 = [2]
-- p10 = 1735689600000
-- p11 = 'shop'
-- p12 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p13 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p14 = 'utm_source'
-- p15 = 'google'
-- p16 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p17 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p18 = ['add_to_cart', 'page_view', 'purchase', 'refund']
-- p19 = 1738368000000
