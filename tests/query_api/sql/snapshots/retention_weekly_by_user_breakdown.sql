WITH firsts AS (
    SELECT if(ids.identified != '', ids.identified, events.visitor_id) AS entity,
           min(events.timestamp) AS first_at,
           argMin(events.properties[{p4:String}], (events.timestamp, events.event_id)) AS value
    FROM events
        LEFT JOIN (
            SELECT visitor_id, argMax(user_id, timestamp) AS identified
            FROM events
            WHERE project_id = {p0:String} AND user_id != ''
            GROUP BY visitor_id
        ) AS ids ON ids.visitor_id = events.visitor_id
    WHERE events.project_id = {p0:String}
      AND events.event = {p5:String}
      AND events.timestamp < {p3:DateTime64(3, 'UTC')}
    GROUP BY entity
    HAVING first_at >= {p2:DateTime64(3, 'UTC')}
),
returns AS (
    SELECT if(ids.identified != '', ids.identified, events.visitor_id) AS entity, events.timestamp AS at
    FROM events
        LEFT JOIN (
            SELECT visitor_id, argMax(user_id, timestamp) AS identified
            FROM events
            WHERE project_id = {p0:String} AND user_id != ''
            GROUP BY visitor_id
        ) AS ids ON ids.visitor_id = events.visitor_id
    WHERE events.project_id = {p0:String}
      AND events.event = {p6:String}
      AND events.timestamp >= {p2:DateTime64(3, 'UTC')}
      AND events.timestamp < {p3:DateTime64(3, 'UTC')}
),
per_entity AS (
    SELECT f.entity AS entity,
           toMonday(f.first_at, {p1:String}) AS cohort,
           f.value AS value,
           arrayFilter(p -> p >= 0 AND p <= {p7:Int64},
                       groupUniqArray(if(r.at > f.first_at, intDiv(dateDiff('day', toMonday(f.first_at, {p1:String}), toMonday(r.at, {p1:String})), 7), -1))) AS ps
    FROM firsts AS f
    LEFT JOIN returns AS r ON r.entity = f.entity
    GROUP BY entity, cohort, value
)
SELECT 'on' AS kind, cohort, value, arrayJoin(ps) AS period, count() AS entities
FROM per_entity
GROUP BY cohort, value, period
UNION ALL
SELECT 'last' AS kind, cohort, value, if(empty(ps), -1, arrayMax(ps)) AS period,
       count() AS entities
FROM per_entity
GROUP BY cohort, value, period
ORDER BY kind, cohort, value, period
SETTINGS join_use_nulls = 0

-- p0 = 'shop'
-- p1 = 'Europe/Berlin'
-- p2 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p3 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p4 = 'plan'
-- p5 = 'purchase'
-- p6 = 'purchase'
-- p7 = 8
