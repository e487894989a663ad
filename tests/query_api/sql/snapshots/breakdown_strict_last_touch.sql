SELECT r <= {p14:UInt32} AS top, if(top, value, '') AS bucket, level, sum(c) AS entities
FROM (
    SELECT value, level, c, dense_rank() OVER (ORDER BY total DESC, value) AS r
    FROM (
        SELECT value, level, count() AS c, sum(count()) OVER (PARTITION BY value) AS total
        FROM (
    SELECT level, picked AS value
    FROM (
    SELECT visitor_id, st, re, pr, firsts, vals, tail, arrayLastIndex(x -> x >= 0, st) AS level, vals[level] AS picked, re[level] AS attributed_at
    FROM (SELECT visitor_id,
       arrayMap(s -> s.1, slots) AS st,
       arrayMap(s -> s.2, slots) AS re,
       arrayMap(s -> s.3, slots) AS pr,
       arrayMap(s -> s.5, slots) AS firsts, arrayMap(s -> s.6, slots) AS vals,
       arrayMap(s -> s.4 = last, slots) AS tail
FROM (
    SELECT visitor_id, arrayFold((acc, x) -> if(x.2 > 1, acc, if(x.2 > 0, arrayMap(s -> if(s.1 >= 0 AND (arrayLastIndex(t -> t.1 = s.1, acc) - 1) >= {p8:Array(Int64)}[x.2] AND (arrayLastIndex(t -> t.1 = s.1, acc) - 1) < {p9:Array(Int64)}[x.2], (toInt64(-1), toInt64(-1), toInt64(-1), toInt64(-1), '', ''), s), acc), if(x.2 = 0, arrayMap((s, j) -> if(j = 1, (x.1, x.1, x.1, x.3, x.4, x.4), s), acc, range(1, 4)), if(acc[-x.2].1 >= 0 AND x.1 <= acc[-x.2].1 + {p7:Int64} AND acc[-x.2].4 = x.3 - 1, arrayMap((s, j) -> if(j = 1 - x.2, (acc[-x.2].1, x.1, acc[-x.2].2, x.3, acc[-x.2].5, x.4), s), acc, range(1, 4)), acc)))), arrayMap((k, o, v) -> (toInt64(bitShiftRight(k, 198)) + {p10:Int64}, toInt64(bitAnd(k, 18446744073709551615)) - 4294967296, o, v), (arraySort(groupArray(bitOr(bitOr(bitShiftLeft(toUInt256((ts - {p10:Int64}) * 64 + rank + 1), 192), bitShiftLeft(toUInt256(reinterpretAsUInt128(eid)), 64)), toUInt256(kind + 4294967296)) AS key)) AS ks), (arrayCumSum(arrayMap((k, i) -> toInt64(i = 1 OR bitShiftRight(k, 64) != bitShiftRight(ks[i - 1], 64)), ks, arrayEnumerate(ks))) AS ords), arraySort((v, k) -> k, groupArray(value), groupArray(key))), arrayMap(i -> (toInt64(-1), toInt64(-1), toInt64(-1), toInt64(-1), '', ''), range(3))) AS slots, ords[-1] AS last
    FROM (
    SELECT visitor_id AS visitor_id, toUnixTimestamp64Milli(timestamp) AS ts, event_id AS eid,
           arrayResize((arrayFilter(i -> [(event = {p1:String}), (event = {p2:String} AND ifNull(toFloat64OrNull(properties[{p3:String}]) > {p4:Float64}, 0)), (event = {p5:String}), (event = {p6:String})][i + 1], range(4)) AS found), greatest(1, length(found)), 4) AS matched,
           if(matched[1] >= 3, -1, matched[1]) AS rank,
           arrayJoin(matched) AS idx,
           if(idx >= 3, toInt64(idx) - 3 + 1, -toInt64(idx)) AS kind, events.properties[{p0:String}] AS value
    FROM events
    WHERE project_id = {p11:String}
      AND timestamp >= {p12:DateTime64(3, 'UTC')}
      AND timestamp < {p13:DateTime64(3, 'UTC')}
    )
    GROUP BY visitor_id
))
    WHERE level > 0
    )
        )
        GROUP BY value, level
    )
)
GROUP BY top, bucket, level
ORDER BY top DESC, bucket, level

-- p0 = 'plan'
-- p1 = 'page_view'
-- p2 = 'add_to_cart'
-- p3 = 'price'
-- p4 = 10.0
-- p5 = 'purchase'
-- p6 = 'support_ticket'
-- p7 = 86400000
-- p8 = [0]
-- p9 = [2]
-- p10 = 1735689600000
-- p11 = 'shop'
-- p12 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p13 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p14 = 10
