WITH board AS (
    SELECT visitor_id, level, step_reached_at[level] AS entered_at
    FROM funnel_state FINAL
    WHERE project_id = {project:String}
      AND funnel_id = {funnel:String}
      AND level > 0
),
activity AS (
    SELECT visitor_id AS entity, max(timestamp) AS last_seen, argMaxIf(properties[{name0:String}], timestamp, mapContains(properties, {name0:String})) AS p0
    FROM events
    WHERE project_id = {project:String} AND visitor_id IN (SELECT visitor_id FROM board)
    GROUP BY visitor_id
)
SELECT b.level, count() AS visitors
FROM board AS b LEFT JOIN activity AS a ON a.entity = b.visitor_id
WHERE a.p0 = {value0:String}
GROUP BY b.level

-- project = 'shop'
-- funnel = 'checkout'
-- name0 = 'owner'
-- value0 = 'ann'
