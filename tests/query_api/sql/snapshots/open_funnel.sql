SELECT step, count() AS entered, countIf(continued) AS continued
FROM (
    SELECT [arraySort(groupArrayIf(ms, (event = {p0:String}))), arraySort(groupArrayIf(ms, (event = {p1:String} AND ifNull(toFloat64OrNull(properties[{p2:String}]) > {p3:Float64}, 0)))), arraySort(groupArrayIf(ms, (event = {p4:String})))] AS at,
           arrayMap(k -> k < 3 AND arrayExists(
               b -> arrayExists(a -> a < b AND b <= a + {p6:Array(Int64)}[k], at[k]), at[k + 1]),
               range(1, 4)) AS nexts
    FROM (
        SELECT visitor_id AS entity, toUnixTimestamp64Milli(timestamp) AS ms, event, properties
        FROM events
        WHERE project_id = {p5:String}
          AND timestamp >= {p7:DateTime64(3, 'UTC')}
          AND timestamp < {p8:DateTime64(3, 'UTC')}
          AND event IN {p9:Array(String)}
    )
    GROUP BY entity
)
ARRAY JOIN at AS xs, nexts AS continued, arrayEnumerate(at) AS step
WHERE length(xs) > 0
GROUP BY step
ORDER BY step

-- p0 = 'page_view'
-- p1 = 'add_to_cart'
-- p2 = 'price'
-- p3 = 10.0
-- p4 = 'purchase'
-- p5 = 'shop'
-- p6 = [86400000, 86400000, 0]
-- p7 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p8 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p9 = ['add_to_cart', 'page_view', 'purchase']
