WITH board AS (
    SELECT visitor_id, level, step_reached_at[level] AS entered_at
    FROM funnel_state FINAL
    WHERE project_id = {project:String}
      AND funnel_id = {funnel:String}
      AND level > 0
      AND level = {level:UInt8}
      AND step_reached_at[level] <= {stalled_before:DateTime64(3, 'UTC')}
      AND (level, toUnixTimestamp64Milli(entered_at), visitor_id) > ({c_level:UInt8}, {c_entered:Int64}, {c_visitor:String})
    ORDER BY level, entered_at, visitor_id
    LIMIT {limit:UInt32}
),
activity AS (
    SELECT visitor_id AS entity, max(timestamp) AS last_seen, argMaxIf(properties[{name0:String}], timestamp, mapContains(properties, {name0:String})) AS p0
    FROM events
    WHERE project_id = {project:String} AND visitor_id IN (SELECT visitor_id FROM board)
    GROUP BY visitor_id
)
SELECT b.level, b.entered_at, b.visitor_id, a.last_seen, a.p0
FROM board AS b LEFT JOIN activity AS a ON a.entity = b.visitor_id
ORDER BY b.level, b.entered_at, b.visitor_id
LIMIT {limit:UInt32}

-- limit = 101
-- c_level = 2
-- c_entered = 0
-- c_visitor = 'v1'
-- project = 'shop'
-- funnel = 'checkout'
-- level = 2
-- stalled_before = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- name0 = 'owner'
