SELECT toUnixTimestamp(toDateTime(toMonday(fromUnixTimestamp64Milli(st[level], {p10:String})), {p10:String})) AS bucket,
       count() AS entered,
       countIf(level = 3) AS converted
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
      AND event IN {p9:Array(String)}
    )
    WHERE step >= 0
    GROUP BY visitor_id
))
    WHERE level > 0
)
GROUP BY bucket
ORDER BY bucket

-- p0 = 'page_view'
-- p1 = 'add_to_cart'
-- p2 = 'price'
-- p3 = 10.0
-- p4 = 'purchase'
-- p5 = 1735689600000
-- p6 = 'shop'
-- p7 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p8 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p9 = ['add_to_cart', 'page_view', 'purchase']
-- p10 = 'Europe/Berlin'
