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
       [countIf(level = 1 AND {p12:Int64} <= open_until),
        countIf(level = 2 AND {p12:Int64} <= open_until),
        0] AS waiting
    FROM (
    SELECT visitor_id, st, re, pr, arrayLastIndex(x -> x >= 0, st) AS level, st[level] + {p0:Int64} AS open_until
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
       [if(a1 > 0, ms[a1], -1), if(a2 > 0, att[a2][1].1, -1), if(a3 > 0, att[a3][2].1, -1)] AS pr
FROM (
    SELECT visitor_id, arraySort(groupArray(bitOr(bitOr(bitShiftLeft(toUInt256(rel * 64 + step), 192), bitShiftLeft(toUInt256(reinterpretAsUInt128(eid)), 64)), toUInt256(0)) AS key)) AS ks
    FROM (
    SELECT visitor_id AS visitor_id, (toUnixTimestamp64Milli(timestamp) - {p7:Int64}) AS rel, event_id AS eid, multiIf((event = {p1:String}), 0, (event = {p2:String} AND ifNull(toFloat64OrNull(properties[{p3:String}]) > {p4:Float64}, 0)), 1, (event = {p5:String}), 2, -1) AS step
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
ARRAY JOIN arrayEnumerate(reach) AS step
ORDER BY step

-- p0 = 86400000
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
-- p12 = 1738368000000
