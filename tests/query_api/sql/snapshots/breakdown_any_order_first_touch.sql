SELECT r <= {p12:UInt32} AS top, if(top, value, '') AS bucket, level, sum(c) AS entities
FROM (
    SELECT value, level, c, dense_rank() OVER (ORDER BY total DESC, value) AS r
    FROM (
        SELECT value, level, count() AS c, sum(count()) OVER (PARTITION BY value) AS total
        FROM (
    SELECT level, picked AS value
    FROM (
    SELECT visitor_id, st, re, pr, firsts, vals, arrayLastIndex(x -> x >= 0, st) AS level, firsts[level] AS picked, st[level] AS attributed_at
    FROM (SELECT visitor_id,
       arrayMap(k -> toInt64(bitShiftRight(k, 198)) + {p7:Int64}, ks) AS ms,
       arrayMap(k -> toInt64(bitAnd(bitShiftRight(k, 192), 63)), ks) AS sp,
       arrayEnumerate(ks) AS pos,
       arrayMap(i -> arraySort(arrayFilter(x -> x.3 > 0, arrayMap(s -> (ms[arrayFirstIndex((t, p, j) -> p = s AND j >= i AND t <= ms[i] + {p6:Int64}, ms, sp, pos)], s, arrayFirstIndex((t, p, j) -> p = s AND j >= i AND t <= ms[i] + {p6:Int64}, ms, sp, pos)), range(3)))), pos) AS att,
       arrayLastIndex(x -> length(x) >= 1, att) AS a1,
       arrayLastIndex(x -> length(x) >= 2, att) AS a2,
       arrayLastIndex(x -> length(x) >= 3, att) AS a3,
       [if(a1 > 0, ms[a1], -1), if(a2 > 0, ms[a2], -1), if(a3 > 0, ms[a3], -1)] AS st,
       [if(a1 > 0, att[a1][1].1, -1), if(a2 > 0, att[a2][2].1, -1), if(a3 > 0, att[a3][3].1, -1)] AS re,
       [if(a1 > 0, ms[a1], -1), if(a2 > 0, att[a2][1].1, -1), if(a3 > 0, att[a3][2].1, -1)] AS pr,
       [if(a1 > 0, v[a1], ''), if(a2 > 0, v[a2], ''), if(a3 > 0, v[a3], '')] AS firsts,
       [if(a1 > 0, v[att[a1][1].3], ''), if(a2 > 0, v[att[a2][2].3], ''), if(a3 > 0, v[att[a3][3].3], '')] AS vals
FROM (
    SELECT visitor_id, arraySort(groupArray(bitOr(bitOr(bitShiftLeft(toUInt256(rel * 64 + step), 192), bitShiftLeft(toUInt256(reinterpretAsUInt128(eid)), 64)), toUInt256(0)) AS key)) AS ks,
           arraySort((v, k) -> k, groupArray(value), groupArray(key)) AS v
    FROM (
    SELECT visitor_id AS visitor_id, (toUnixTimestamp64Milli(timestamp) - {p7:Int64}) AS rel, event_id AS eid, multiIf((event = {p1:String}), 0, (event = {p2:String} AND ifNull(toFloat64OrNull(properties[{p3:String}]) > {p4:Float64}, 0)), 1, (event = {p5:String}), 2, -1) AS step, events.properties[{p0:String}] AS value
    FROM events
    WHERE project_id = {p8:String}
      AND timestamp >= {p9:DateTime64(3, 'UTC')}
      AND timestamp < {p10:DateTime64(3, 'UTC')}
      AND event IN {p11:Array(String)}
    )
    WHERE step >= 0
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
-- p6 = 86400000
-- p7 = 1735689600000
-- p8 = 'shop'
-- p9 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p10 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p11 = ['add_to_cart', 'page_view', 'purchase']
-- p12 = 10
