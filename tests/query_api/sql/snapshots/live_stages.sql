SELECT level, count() AS visitors
FROM funnel_state FINAL
WHERE project_id = {project:String} AND funnel_id = {funnel:String}
GROUP BY level

-- project = 'shop'
-- funnel = 'checkout'
