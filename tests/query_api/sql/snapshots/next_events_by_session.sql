SELECT next_event, count() AS entities
FROM (
    SELECT d.visitor_id AS entity, argMin(x.event, x.ms) AS next_event
    FROM (
        SELECT visitor_id, re[level] AS reached_ms
        FROM (
    SELECT visitor_id, st, re, pr, arrayLastIndex(x -> x >= 0, st) AS level, st[level] + {p0:Int64} AS open_until
    FROM (SELECT visitor_id,
       arrayMap((x, g) -> x - g, e, arrayCumSumNonNegative(arrayMap((x, d) -> if(bitAnd(x, 63) = 0, -9223372036854775807, d), e, arrayDifference(e)))) AS f0, f0 AS g0,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 1 AND bitAnd(a, 63) = 0 AND x <= a + 5529600001, a, -1), e, f0) AS s1,
       arrayFill(x -> x >= 0, s1) AS f1,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 2 AND a >= 0 AND x <= a + 5529600002, a, -1), e, f1) AS s2,
       arrayLastIndex(x -> bitAnd(x, 63) = 0, e) AS i0,
       arrayLastIndex(x -> x >= 0, s1) AS i1,
       arrayLastIndex(x -> x >= 0, s2) AS i2,
       if(i0 > 0, bitShiftRight(e[i0], 6) + {p6:Int64}, -1) AS st1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p6:Int64}, -1) AS re1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p6:Int64}, -1) AS pr1,
       if(i1 > 0, bitShiftRight(s1[i1], 6) + {p6:Int64}, -1) AS st2, if(i1 > 0, bitShiftRight(e[i1], 6) + {p6:Int64}, -1) AS re2, if(i1 > 0, bitShiftRight(s1[i1], 6) + {p6:Int64}, -1) AS pr2,
       if(i2 > 0, bitShiftRight(s2[i2], 6) + {p6:Int64}, -1) AS st3, if(i2 > 0, bitShiftRight(e[i2], 6) + {p6:Int64}, -1) AS re3, if(i2 > 0, bitShiftRight(e[arrayLastIndex(x -> x >= 0, arraySlice(s1, 1, i2))], 6) + {p6:Int64}, -1) AS pr3,
       [st1, st2, st3] AS st, [re1, re2, re3] AS re, [pr1, pr2, pr3] AS pr
FROM (
    SELECT visitor_id, arraySort(groupArray(packed)) AS e
    FROM (
    SELECT sessions.session AS visitor_id, multiIf((event = {p1:String}), 0, (event = {p2:String} AND ifNull(toFloat64OrNull(properties[{p3:String}]) > {p4:Float64}, 0)), 1, (event = {p5:String}), 2, -1) AS step, (toUnixTimestamp64Milli(timestamp) - {p6:Int64}) * 64 + step AS packed
    FROM events
    ANY LEFT JOIN (
        SELECT event_id AS session_event,
               concat(visitor_id, '#', toString(sum(new) OVER (PARTITION BY visitor_id ORDER BY timestamp ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))) AS session
        FROM (
            SELECT event_id, visitor_id, timestamp,
                   if(toUnixTimestamp64Milli(timestamp) - lagInFrame(toUnixTimestamp64Milli(timestamp)) OVER (PARTITION BY visitor_id ORDER BY timestamp ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) >= 1800000, 1, 0) AS new
            FROM events
            WHERE project_id = {p7:String}
              AND timestamp >= {p8:DateTime64(3, 'UTC')}
              AND timestamp < {p9:DateTime64(3, 'UTC')}
        )
    ) AS sessions ON sessions.session_event = events.event_id
    WHERE project_id = {p7:String}
      AND timestamp >= {p10:DateTime64(3, 'UTC')}
      AND timestamp < {p11:DateTime64(3, 'UTC')}
      AND event IN {p12:Array(String)}
    )
    WHERE step >= 0
    GROUP BY visitor_id
))
    WHERE level > 0
        )
        WHERE level = {p16:UInt32}
          AND open_until < {p17:Int64}
    ) AS d
    INNER JOIN (
        SELECT sessions.session AS entity, event, toUnixTimestamp64Milli(timestamp) AS ms
        FROM events
    ANY LEFT JOIN (
        SELECT event_id AS session_event,
               concat(visitor_id, '#', toString(sum(new) OVER (PARTITION BY visitor_id ORDER BY timestamp ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))) AS session
        FROM (
            SELECT event_id, visitor_id, timestamp,
                   if(toUnixTimestamp64Milli(timestamp) - lagInFrame(toUnixTimestamp64Milli(timestamp)) OVER (PARTITION BY visitor_id ORDER BY timestamp ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) >= 1800000, 1, 0) AS new
            FROM events
            WHERE project_id = {p13:String}
              AND timestamp >= {p14:DateTime64(3, 'UTC')}
              AND timestamp < {p15:DateTime64(3, 'UTC')}
        )
    ) AS sessions ON sessions.session_event = events.event_id
        WHERE project_id = {p13:String}
          AND timestamp >= {p18:DateTime64(3, 'UTC')}
          AND timestamp < {p19:DateTime64(3, 'UTC')}
    ) AS x ON x.entity = d.visitor_id
    WHERE x.ms > d.reached_ms
    GROUP BY d.visitor_id
)
GROUP BY next_event
ORDER BY entities DESC, next_event
LIMIT {p20:UInt32}

-- p0 = 86400000
-- p1 = 'page_view'
-- p2 = 'add_to_cart'
-- p3 = 'price'
-- p4 = 10.0
-- p5 = 'purchase'
-- p6 = 1735689600000
-- p7 = 'shop'
-- p8 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p9 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p10 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p11 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p12 = ['add_to_cart', 'page_view', 'purchase']
-- p13 = 'shop'
-- p14 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p15 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p16 = 1
-- p17 = 1738368000000
-- p18 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p19 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p20 = 10
