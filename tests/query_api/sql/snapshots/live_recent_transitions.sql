SELECT step, count() AS transitions
FROM funnel_transitions_by_time FINAL
WHERE project_id = {project:String} AND funnel_id = {funnel:String}
  AND reached_at >= {since:DateTime64(3, 'UTC')}
  AND kind != 'retracted'
GROUP BY step

-- project = 'shop'
-- funnel = 'checkout'
-- since = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
