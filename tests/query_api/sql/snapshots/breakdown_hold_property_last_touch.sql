SELECT r <= {p12:UInt32} AS top, if(top, value, '') AS bucket, level, sum(c) AS entities
FROM (
    SELECT value, level, c, dense_rank() OVER (ORDER BY total DESC, value) AS r
    FROM (
        SELECT value, level, count() AS c, sum(count()) OVER (PARTITION BY value) AS total
        FROM (
    SELECT level, picked AS value
    FROM (
    SELECT visitor_id, st, re, pr, firsts, vals, arrayLastIndex(x -> x >= 0, st) AS level, vals[level] AS picked, re[level] AS attributed_at
    FROM (SELECT entity AS visitor_id,
       arrayMap(k -> arrayReverseSort(p -> (p.1[k], p.2[k], p.6), parts)[1],
                range(1, 4)) AS chosen,
       arrayMap((c, k) -> c.1[k], chosen, range(1, 4)) AS st,
       arrayMap((c, k) -> c.2[k], chosen, range(1, 4)) AS re,
       arrayMap((c, k) -> c.3[k], chosen, range(1, 4)) AS pr,
       arrayMap((c, k) -> c.4[k], chosen, range(1, 4)) AS firsts,
       arrayMap((c, k) -> c.5[k], chosen, range(1, 4)) AS vals
FROM (
    SELECT visitor_id.1 AS entity, groupArray((st, re, pr, firsts, vals, visitor_id.2)) AS parts
    FROM (SELECT visitor_id,
       arrayMap((x, g) -> x - g, e, arrayCumSumNonNegative(arrayMap((x, d) -> if(bitAnd(x, 63) = 0, -9223372036854775807, d), e, arrayDifference(e)))) AS f0, f0 AS g0,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 1 AND bitAnd(a, 63) = 0 AND x <= a + 5529600001, a, -1), e, f0) AS s1,
       arrayFill(x -> x >= 0, s1) AS f1,
       arrayMap((x, a) -> if(bitAnd(x, 63) = 2 AND a >= 0 AND x <= a + 5529600002, a, -1), e, f1) AS s2,
       arrayLastIndex(x -> bitAnd(x, 63) = 0, e) AS i0,
       arrayLastIndex(x -> x >= 0, s1) AS i1,
       arrayLastIndex(x -> x >= 0, s2) AS i2,
       arrayMap((x, j) -> if(bitAnd(x, 63) = 0, j, 0), e, arrayEnumerate(e)) AS q0,
       arrayFill(x -> x > 0, q0) AS h0,
       arrayMap((a, j) -> if(a >= 0, j, 0), s1, h0) AS q1,
       arrayFill(x -> x > 0, q1) AS h1,
       arrayMap((a, j) -> if(a >= 0, j, 0), s2, h1) AS q2,
       [v[q0[i0]], v[q1[i1]], v[q2[i2]]] AS firsts,
       [v[i0], v[i1], v[i2]] AS vals,
       if(i0 > 0, bitShiftRight(e[i0], 6) + {p6:Int64}, -1) AS st1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p6:Int64}, -1) AS re1, if(i0 > 0, bitShiftRight(e[i0], 6) + {p6:Int64}, -1) AS pr1,
       if(i1 > 0, bitShiftRight(s1[i1], 6) + {p6:Int64}, -1) AS st2, if(i1 > 0, bitShiftRight(e[i1], 6) + {p6:Int64}, -1) AS re2, if(i1 > 0, bitShiftRight(s1[i1], 6) + {p6:Int64}, -1) AS pr2,
       if(i2 > 0, bitShiftRight(s2[i2], 6) + {p6:Int64}, -1) AS st3, if(i2 > 0, bitShiftRight(e[i2], 6) + {p6:Int64}, -1) AS re3, if(i2 > 0, bitShiftRight(e[arrayLastIndex(x -> x >= 0, arraySlice(s1, 1, i2))], 6) + {p6:Int64}, -1) AS pr3,
       [st1, st2, st3] AS st, [re1, re2, re3] AS re, [pr1, pr2, pr3] AS pr
FROM (
    SELECT visitor_id,
           arrayMap(k -> toInt64(bitShiftRight(k, 198)) * 64 + 63 - toInt64(bitAnd(k, 63)),
                    arraySort(groupArray(bitOr(bitOr(bitShiftLeft(toUInt256(rel * 64 + matched[1]), 192), bitShiftLeft(toUInt256(reinterpretAsUInt128(eid)), 64)), toUInt256(63 - idx)) AS key))) AS e,
           arraySort((v, k) -> k, groupArray(value), groupArray(key)) AS v
    FROM (
    SELECT (visitor_id, events.properties[{p10:String}]) AS visitor_id, (toUnixTimestamp64Milli(timestamp) - {p6:Int64}) AS rel, event_id AS eid, arrayFilter(i -> [(event = {p1:String}), (event = {p2:String} AND ifNull(toFloat64OrNull(properties[{p3:String}]) > {p4:Float64}, 0)), (event = {p5:String})][i + 1], range(3)) AS matched, arrayJoin(matched) AS idx, events.properties[{p0:String}] AS value
    FROM events
    WHERE project_id = {p7:String}
      AND timestamp >= {p8:DateTime64(3, 'UTC')}
      AND timestamp < {p9:DateTime64(3, 'UTC')}
      AND event IN {p11:Array(String)}
    )
    GROUP BY visitor_id
))
    GROUP BY entity
))
    WHERE level > 0
    )
        )
        GROUP BY value, level
    )
)
GROUP BY top, bucket, level
ORDER BY top DESC, bucket, level

-- p0 = 'plan'
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
-- p12 = 10
