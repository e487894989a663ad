SELECT step,
       countIf(level >= step) AS entities,
       quantileExactIf(0.5)(s.2 - s.1, s.1 >= 0) AS median_ms,
       quantileExactIf(0.9)(s.2 - s.1, s.1 >= 0) AS p90_ms,
       avgIf(s.2 - s.1, s.1 >= 0) AS avg_ms,
       quantileExactIf(0.5)(s.2 - s.4, s.1 >= 0) AS median_from_previous_ms,
       quantileExactIf(0.9)(s.2 - s.4, s.1 >= 0) AS p90_from_previous_ms,
       avgIf(s.2 - s.4, s.1 >= 0) AS avg_from_previous_ms,
       countIf(level = step AND step < 3 AND {p11:Int64} <= open_until)
           AS in_progress
FROM (
    SELECT slots, arrayLastIndex(s -> s.1 >= 0, slots) AS level, slots[level].1 + {p10:Int64} AS open_until
    FROM (SELECT visitor_id, arrayFold((acc, x) -> if(x.4 = 0, arrayMap((s, j) -> if(j = 1, (x.1, x.1, x.3, x.1), s), acc, range(1, 4)), if(acc[-x.4].1 >= 0 AND x.1 <= acc[-x.4].1 + {p5:Int64}, arrayMap((s, j) -> if(j = 1 - x.4, (acc[-x.4].1, x.1, x.3, acc[-x.4].2), s), acc, range(1, 4)), acc)), arraySort(groupArray((ts, rank, eid, kind))), arrayMap(i -> (toInt64(-1), toInt64(-1), toUUID('00000000-0000-0000-0000-000000000000'), toInt64(-1)), range(3))) AS slots
FROM (
    SELECT visitor_id AS visitor_id, toUnixTimestamp64Milli(timestamp) AS ts, event_id AS eid,
           arrayFilter(i -> [(event = {p0:String}), (event = {p1:String} AND ifNull(toFloat64OrNull(properties[{p2:String}]) > {p3:Float64}, 0)), (event = {p4:String})][i + 1], range(3)) AS matched,
           matched[1] AS rank,
           arrayJoin(matched) AS idx,
           -toInt64(idx) AS kind
    FROM events
    WHERE project_id = {p6:String}
      AND timestamp >= {p7:DateTime64(3, 'UTC')}
      AND timestamp < {p8:DateTime64(3, 'UTC')}
      AND event IN {p9:Array(String)}
)
GROUP BY visitor_id)
    WHERE level > 0
)
ARRAY JOIN slots AS s, arrayEnumerate(slots) AS step
GROUP BY step
ORDER BY step

-- p0 = 'page_view'
-- p1 = 'add_to_cart'
-- p2 = 'price'
-- p3 = 10.0
-- p4 = 'purchase'
-- p5 = 86400000
-- p6 = 'shop'
-- p7 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p8 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p9 = ['add_to_cart', 'page_view', 'purchase']
-- p10 = 86400000
-- p11 = 1738368000000
