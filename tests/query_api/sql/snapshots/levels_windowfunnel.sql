SELECT visitor_id,
       windowFunnel({p5:UInt64})(toUInt64(toUnixTimestamp64Milli(timestamp)), (event = {p0:String}), (event = {p1:String} AND ifNull(toFloat64OrNull(properties[{p2:String}]) > {p3:Float64}, 0)), (event = {p4:String})) AS level
FROM events
WHERE project_id = {p6:String}
  AND timestamp >= {p7:DateTime64(3, 'UTC')}
  AND timestamp < {p8:DateTime64(3, 'UTC')}
  AND event IN {p9:Array(String)}
GROUP BY visitor_id

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
