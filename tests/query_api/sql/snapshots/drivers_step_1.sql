WITH population AS (
    SELECT visitor_id AS entity,
           level > 2 AS converted,
           if(converted, pr[3], re[2]) AS from_ms,
           if(converted, re[3], least(st[2] + {p11:Int64}, {p12:Int64})) AS until_ms,
           toUUID(vals[2]) AS step_event
    FROM (
    SELECT visitor_id, st, re, pr, firsts, vals, arrayLastIndex(x -> x >= 0, st) AS level, st[level] + {p0:Int64} AS open_until
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
    SELECT visitor_id AS visitor_id, (toUnixTimestamp64Milli(timestamp) - {p6:Int64}) AS rel, event_id AS eid, arrayFilter(i -> [(event = {p1:String}), (event = {p2:String} AND ifNull(toFloat64OrNull(properties[{p3:String}]) > {p4:Float64}, 0)), (event = {p5:String})][i + 1], range(3)) AS matched, arrayJoin(matched) AS idx, toString(events.event_id) AS value
    FROM events
    WHERE project_id = {p7:String}
      AND timestamp >= {p8:DateTime64(3, 'UTC')}
      AND timestamp < {p9:DateTime64(3, 'UTC')}
      AND event IN {p10:Array(String)}
    )
    GROUP BY visitor_id
))
    WHERE level > 0
    )
    WHERE (level > 2 OR (level = 2 AND open_until < {p16:Int64}))
)
SELECT feature.1 AS kind, feature.2 AS name, feature.3 AS value,
       countIf(converted) AS converted_with, countIf(NOT converted) AS dropped_with
FROM (
    SELECT p.converted AS converted,
           arrayJoin(arrayConcat(
               [('total', '', '')],
               arrayMap(n -> ('event', n, ''), arrayDistinct(arrayFilter(
                   (n, ms) -> ms > p.from_ms AND ms < p.until_ms, x.names, x.times))),
               arrayMap(kv -> ('property', kv.1, kv.2),
                        arrayZip(mapKeys(e.properties), mapValues(e.properties))),
               arrayFilter(f -> f.3 != '', [('session', 'entry_url', s.entry_url), ('session', 'referrer', s.referrer), ('session', 'utm_source', s.utm_source), ('session', 'utm_medium', s.utm_medium), ('session', 'utm_campaign', s.utm_campaign), ('session', 'device', s.device), ('session', 'browser', s.browser), ('session', 'os', s.os), ('session', 'country', s.country)])
           )) AS feature
    FROM population AS p
    LEFT JOIN (
        SELECT entity, groupArray(event) AS names, groupArray(ms) AS times
        FROM (
            SELECT visitor_id AS entity, toString(events.event) AS event,
                   toUnixTimestamp64Milli(events.timestamp) AS ms
            FROM events
            WHERE events.project_id = {p13:String} AND events.timestamp >= {p14:DateTime64(3, 'UTC')} AND events.timestamp < {p15:DateTime64(3, 'UTC')}
        )
        GROUP BY entity
    ) AS x ON x.entity = p.entity
    LEFT JOIN (
        SELECT event_id, visitor_id, toUnixTimestamp64Milli(timestamp) AS ms, properties
        FROM events
        WHERE project_id = {p13:String} AND timestamp >= {p14:DateTime64(3, 'UTC')} AND timestamp < {p15:DateTime64(3, 'UTC')}
    ) AS e ON e.event_id = p.step_event
    LEFT ASOF JOIN (
        SELECT visitor_id, toUnixTimestamp64Milli(started_at) AS started_ms,
               entry_url, referrer, utm_source, utm_medium, utm_campaign, device, browser, os, country
        FROM sessions FINAL
        WHERE project_id = {p13:String} AND is_deleted = 0
    ) AS s ON e.visitor_id = s.visitor_id AND e.ms >= s.started_ms
)
GROUP BY kind, name, value
ORDER BY kind = 'total' DESC, count() DESC, kind, name, value
LIMIT {p17:UInt32}

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
-- p10 = ['add_to_cart', 'page_view', 'purchase']
-- p11 = 86400000
-- p12 = 1738368000000
-- p13 = 'shop'
-- p14 = datetime.datetime(2025, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p15 = datetime.datetime(2025, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
-- p16 = 1738368000000
-- p17 = 501
