SELECT multiIf(a.seen = 0, 0, a.seen = 1, 1, 2) AS status,
       if(status = 1, a.variant, '') AS variant,
       h.level AS level,
       count() AS entities
FROM (
    SELECT visitor_id, st, re, pr, arrayLastIndex(x -> x >= 0, st) AS level
    FROM (SELECT visitor_id,
       arrayMap((x, g) -> x - g, e, arrayCumSumNonNegative(arrayMap((x, d) -> if(bitAnd(x, 63) = 0, -9223372036854775807, d), e, arrayDifference(e)))) AS f0, f0 AS g0,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 1 AND bitAnd(a, 63) = 0 AND x <= a + 5529600001, a, -1), e, f0) AS s1,
       arrayFill(x -> x >= 0, s1) AS f1,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 2 AND a >= 0 AND x <= a + 5529600002, a, -1), e, f1) AS s2,
       arrayLastIndex(x -> bitAnd(x, 63) = 0, e) AS i0,
       arrayLastIndex(x -> x >= 0, s1) AS i1,
       arrayLastIndex(x -> x >= 0, s2) AS i2,
       if(i0 > 0, bitShiftRight(e[i0], 6) + {p5:Int64}, -1) AS st1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p5:Int64}, -1) AS re1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p5:Int64}, -1) AS pr1,
       if(i1 > 0, bitShiftRight(s1[i1], 6) + {p5:Int64}, -1) AS st2, if(i1 > 0, bitShiftRight(e[i1], 6) + {p5:Int64}, -1) AS re2, if(i1 > 0, bitShiftRight(s1[i1], 6) + {p5:Int64}, -1) AS pr2,
       if(i2 > 0, bitShiftRight(s2[i2], 6) + {p5:Int64}, -1) AS st3, if(i2 > 0, bitShiftRight(e[i2], 6) + {p5:Int64}, -1) AS re3, if(i2 > 0, bitShiftRight(e[arrayLastIndex(x -> x >= 0, arraySlice(s1, 1, i2))], 6) + {p5:Int64}, -1) AS pr3,
       [st1, st2, st3] AS st, [re1, re2, re3] AS re, [pr1, pr2, pr3] AS pr
FROM (
    SELECT visitor_id, arraySort(groupArray(packed)) AS e
    FROM (
    SELECT visitor_id AS visitor_id, multiIf((event = {p0:String}), 0, (event = {p1:String} AND ifNull(toFloat64OrNull(properties[{p2:String}]) > {p3:Float64}, 0)), 1, (event = {p4:String}), 2, -1) AS step, (toUnixTimestamp64Milli(timestamp) - {p5:Int64}) * 64 + step AS packed
    FROM events
    WHERE project_id = {p6:String}
      AND timestamp >= {p7:DateTime64(3, 'UTC')}
      AND timestamp < {p8:DateTime64(3, 'UTC')}
      AND events.visitor_id IN (
        SELECT DISTINCT visitor_id
        FROM events
        WHERE events.project_id = {p6:String}
          AND events.timestamp >= {p11:DateTime64(3, 'UTC')}
          AND events.timestamp < {p12:DateTime64(3, 'UTC')}
          AND (has({p10:Array(String)}, properties[{p9:String}]))
    )
      AND event IN {p13:Array(String)}
    )
    WHERE step >= 0
    GROUP BY visitor_id
))
    WHERE level > 0
) AS h
LEFT JOIN (
    SELECT entity AS visitor_id, uniqExact(value) AS seen,
           argMin(value, (timestamp, event_id)) AS variant
    FROM (
        SELECT visitor_id AS entity, events.properties[{p15:String}] AS value, events.timestamp AS timestamp,
               events.event_id AS event_id
        FROM events
        WHERE events.project_id = {p14:String}
          AND events.timestamp >= {p16:DateTime64(3, 'UTC')}
          AND events.timestamp < {p17:DateTime64(3, 'UTC')}
          AND value != ''
    )
    GROUP BY entity
) AS a ON a.visitor_id = h.visitor_id
GROUP BY status, variant, level
ORDER BY status, variant, level
SETTINGS join_use_nulls = 0

-- p0 = 'page_view'
-- p1 = 'add_to_cart'
-- p2 = 'price'
-- p3 = 10.0
-- p4 = 'purchase'
-- p5 = 1735689600000
-- p6 = 'shop'
-- p7 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p8 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p9 = 'utm_source'
-- p10 = ['google', 'bing']
-- p11 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p12 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p13 = ['add_to_cart', 'page_view', 'purchase']
-- p14 = 'shop'
-- p15 = 'variant'
-- p16 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p17 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
