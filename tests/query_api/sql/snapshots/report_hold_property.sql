SELECT step,
       reach[step] AS entities,
       q_start[step][1] AS median_ms,
       q_start[step][2] AS p90_ms,
       avg_start[step] AS avg_ms,
       q_previous[step][1] AS median_from_previous_ms,
       q_previous[step][2] AS p90_from_previous_ms,
       avg_previous[step] AS avg_from_previous_ms,
       waiting[step] AS in_progress
FROM (
    SELECT [countIf(level >= 1),
        countIf(level >= 2),
        countIf(level >= 3)] AS reach,
       [[0, 0],
        quantilesExactIf(0.5, 0.9)(re[2] - st[2], st[2] >= 0),
        quantilesExactIf(0.5, 0.9)(re[3] - st[3], st[3] >= 0)] AS q_start,
       [avgIf(0, st[1] >= 0),
        avgIf(re[2] - st[2], st[2] >= 0),
        avgIf(re[3] - st[3], st[3] >= 0)] AS avg_start,
       [[0, 0],
        q_start[2],
        quantilesExactIf(0.5, 0.9)(re[3] - pr[3], st[3] >= 0)] AS q_previous,
       [avgIf(0, st[1] >= 0),
        avg_start[2],
        avgIf(re[3] - pr[3], st[3] >= 0)] AS avg_previous,
       [countIf(level = 1 AND {p12:Int64} <= open_until),
        countIf(level = 2 AND {p12:Int64} <= open_until),
        0] AS waiting
    FROM (
    SELECT visitor_id, st, re, pr, arrayLastIndex(x -> x >= 0, st) AS level, st[level] + {p0:Int64} AS open_until
    FROM (SELECT entity AS visitor_id,
       arrayMap(k -> arrayReverseSort(p -> (p.1[k], p.2[k], p.4), parts)[1],
                range(1, 4)) AS chosen,
       arrayMap((c, k) -> c.1[k], chosen, range(1, 4)) AS st,
       arrayMap((c, k) -> c.2[k], chosen, range(1, 4)) AS re,
       arrayMap((c, k) -> c.3[k], chosen, range(1, 4)) AS pr
FROM (
    SELECT visitor_id.1 AS entity, groupArray((st, re, pr, visitor_id.2)) AS parts
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
    SELECT (visitor_id, events.properties[{p10:String}]) AS visitor_id, multiIf((event = {p1:String}), 0, (event = {p2:String} AND ifNull(toFloat64OrNull(properties[{p3:String}]) > {p4:Float64}, 0)), 1, (event = {p5:String}), 2, -1) AS step, (toUnixTimestamp64Milli(timestamp) - {p6:Int64}) * 64 + step AS packed
    FROM events
    WHERE project_id = {p7:String}
      AND timestamp >= {p8:DateTime64(3, 'UTC')}
      AND timestamp < {p9:DateTime64(3, 'UTC')}
      AND event IN {p11:Array(String)}
    )
    WHERE step >= 0
    GROUP BY visitor_id
))
    GROUP BY entity
))
    WHERE level > 0
    )
)
ARRAY JOIN arrayEnumerate(reach) AS step
ORDER BY step

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
-- p10 = 'product_id'
-- p11 = ['add_to_cart', 'page_view', 'purchase']
-- p12 = 1738368000000
