"""Dedupe by event id: is a delivered event a resend of one already accepted?

A client that retries after a lost 202, or an import that is run again, sends the same
event (same `event_id`, same visitor) a second time, as a new log message. The first copy
wins; later copies are counted as duplicates and leave no rows and no live state.

What is remembered: every accepted event, in the `events` table itself, so nothing per
visitor grows with its events. Per polled batch the processor asks, in one query, which
of the batch's (project, visitor, event id) are stored already. The query is pruned by the
table's primary key (project, day, visitor): it reads the days of the batch's timestamps,
one day either side, because a resend's timestamp can differ from the original's by the
network delay that ingest's clock-skew correction adds (`schemas/events.py`). Events of
the batch not yet written are checked against the batch's own ids.

The horizon, precisely: a resend is caught for as long as the events table keeps the
original (it has no TTL today), provided the resend's timestamp falls on the UTC day of
the original's or a day next to it (always so when they differ by less than 24 hours).
The cost is one primary-key lookup per polled batch.

A stored copy at the message's own log position is that message, written before a crash
but not committed: it is no resend, and the visitor's `applied_offset` decides whether it
is applied again (processor/state.py). When two copies are both stored (an older release
kept only the last 512 ids per visitor), the one earlier in the log is the original, so a
replay keeps choosing the same one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from funnelstream.clickhouse import ClickHouse
from funnelstream.sql_literals import string_array, string_list
from schemas.events import Event

# (project, visitor, event id): the identity of an event for dedupe.
Key = tuple[str, str, str]
# (log partition, log offset): where a copy of it was delivered.
Position = tuple[int, int]

# The lists travel as one literal each (funnelstream/sql_literals.py): binding or
# parsing thousands of ids as array elements cost more than the lookup itself.
LOOKUP_SQL = """
SELECT project_id, visitor_id, toString(event_id), log_partition, log_offset
FROM events
WHERE project_id IN {projects}
  AND toDate(timestamp) IN {days}
  AND visitor_id IN (SELECT arrayJoin({visitors}))
  AND event_id IN (SELECT toUUIDOrZero(arrayJoin({ids})))
"""

_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A decoded event and the log position it came from."""

    partition: int
    offset: int
    event: Event

    @property
    def key(self) -> Key:
        return (self.event.project_id, self.event.visitor_id, self.event.event_id)

    @property
    def position(self) -> Position:
        return (self.partition, self.offset)


def lookup_sql(deliveries: Iterable[Delivery]) -> str:
    """The query for stored copies of these events. Projects, visitors and ids are
    matched as sets (their cross product may return a row of another visitor's id;
    `resends` matches whole keys)."""
    projects: set[str] = set()
    visitors: set[str] = set()
    ids: set[str] = set()
    days: set[date] = set()
    for d in deliveries:
        projects.add(d.event.project_id)
        visitors.add(d.event.visitor_id)
        ids.add(d.event.event_id)
        day = datetime.fromtimestamp(d.event.timestamp_ms / 1000, UTC).date()
        days.update((day - _DAY, day, day + _DAY))
    return LOOKUP_SQL.format(
        projects=string_array(sorted(projects)),
        days=string_array(d.isoformat() for d in sorted(days)),
        visitors=string_list(sorted(visitors)),
        ids=string_list(sorted(ids)),
    )


def _earlier(stored: Position, position: Position) -> bool:
    """Whether a copy at `stored` came before the delivery at `position`. In another
    partition (the topic was repartitioned and the visitor moved) it was there first."""
    return stored[0] != position[0] or stored[1] < position[1]


def resends(
    deliveries: Sequence[Delivery],
    stored: dict[Key, set[Position]],
    pending: dict[Key, Position],
) -> set[Position]:
    """Positions of the deliveries that are resends: a copy is stored or pending (in the
    unwritten batch) at an earlier position. Pure; records the others in `pending`."""
    out: set[Position] = set()
    for d in deliveries:
        key, position = d.key, d.position
        first = pending.get(key)
        if (first is not None and _earlier(first, position)) or any(
            _earlier(s, position) for s in stored.get(key, ())
        ):
            out.add(position)
        elif first is None:
            pending[key] = position
    return out


class DedupeStore:
    """Answers, per polled batch, which deliveries are resends. Callers need only `seen`,
    so the lookup can be fronted (a bloom filter, a cache) without touching them."""

    def __init__(self, clickhouse: ClickHouse) -> None:
        self._ch = clickhouse

    async def stored(self, deliveries: Sequence[Delivery]) -> dict[Key, set[Position]]:
        """Where the events table holds copies of these deliveries' events."""
        if not deliveries:
            return {}
        found: dict[Key, set[Position]] = {}
        for project, visitor, event_id, partition, offset in await self._ch.query_rows(
            lookup_sql(deliveries)
        ):
            key = (str(project), str(visitor), str(event_id))
            found.setdefault(key, set()).add((int(partition), int(offset)))
        return found

    async def seen(
        self, deliveries: Sequence[Delivery], pending: dict[Key, Position]
    ) -> set[Position]:
        """Positions of the resends among `deliveries` (in log order per partition).
        `pending` holds the unwritten batch's events and gains the new ones; it changes
        only once the lookup succeeded, so a failed call can be retried as is."""
        return resends(deliveries, await self.stored(deliveries), pending)
