"""Erase: one visitor's rows gone from every table, when the log reaches its erasure.

An erasure is a control record on the events log, keyed like the visitor's events
(schemas/erasure.py), so the processor meets it after every event of the visitor that
was appended before it. On reaching it the processor writes and commits what it has
batched (`Processor._erase`), then deletes, in `ERASE_ORDER`, every row that holds the
visitor, drops the visitor's state from memory, and only then counts the record's offset,
so the commit moves past it after the deletes. A crash in between replays the record:
every delete is idempotent, and the events the replay re-applies before it are deleted
again by it.

What "every row" is, table by table (`ERASE_ORDER`): the visitor's events (which are
also the dedupe store, processor/dedupe.py), sessions, live funnel state, transitions
(both copies), identities, stored processor state (every consumer group), backfilled
funnel progress, and dead letters whose payload names the visitor. Events go last: the
transition deletes read them to find the transitions the visitor caused in a user's name.

A visitor that counted for a user (`count_by: "user"`) leaves that user's rows built
partly from its events: after the deletes the user's funnel state is rebuilt from the
visitors left (processor/user_funnels.py), and the user's transitions caused by the
visitor's events are deleted with the visitor's. A user erasure (`user_id` set) deletes
the rows keyed by the user instead.

Deletes are ClickHouse lightweight deletes (`DELETE FROM`): they return once the rows are
marked (`lightweight_deletes_sync`, default 2 since 24.4), and every query, FINAL
included, reads them as gone from then on; later merges remove them from disk.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.log import Log, LogMessage
from processor.rebuild import UserRebuilder
from processor.rows import FUNNEL_STATE_COLUMNS
from processor.state import HeldStates, visitor_key
from schemas.erasure import Erasure, InvalidErasure, decode_erasure, is_erasure

# The users a visitor counts or counted for, read before its identities go.
USERS_SQL = """
SELECT DISTINCT user_id FROM visitor_identities
WHERE project_id = {p:String} AND visitor_id = {v:String} AND user_id != ''
"""

# Transitions in the visitor's name, and those its events caused in its users' names.
_TRANSITIONS_WHERE = """project_id = {p:String} AND (
    visitor_id = {v:String}
    OR (visitor_id IN {users:Array(String)} AND event_id IN (
        SELECT event_id FROM events WHERE project_id = {p:String} AND visitor_id = {v:String}
    )))"""


@dataclass(frozen=True, slots=True)
class Delete:
    table: str
    where: str
    # Only for a user erasure: rows keyed by the user id.
    user_only: bool = False

    def sql(self) -> str:
        return f"DELETE FROM {self.table} WHERE {self.where}"


ERASE_ORDER: tuple[Delete, ...] = (
    Delete("funnel_transitions", _TRANSITIONS_WHERE),
    # Kept by a materialized view, which copies inserts only: deleted on its own.
    Delete("funnel_transitions_by_time", _TRANSITIONS_WHERE),
    Delete("funnel_state", "project_id = {p:String} AND visitor_id = {v:String}"),
    Delete("sessions", "project_id = {p:String} AND visitor_id = {v:String}"),
    Delete("visitor_funnel_progress", "visitor_key = {key:String}"),
    Delete("processor_state", "visitor_key = {key:String}"),
    # The payload is the message as the log held it: an event's JSON names its project
    # and visitor as `"p":…` and `"vid":…` (schemas/events.py `encode`).
    Delete(
        "dead_letters",
        "position(payload, {vid_field:String}) > 0 AND position(payload, {p_field:String}) > 0",
    ),
    # User erasure: the user's own rows (its `count_by: "user"` state and transitions).
    Delete("funnel_transitions", "project_id = {p:String} AND visitor_id = {u:String}", True),
    Delete(
        "funnel_transitions_by_time", "project_id = {p:String} AND visitor_id = {u:String}", True
    ),
    Delete("funnel_state", "project_id = {p:String} AND visitor_id = {u:String}", True),
    Delete("visitor_identities", "project_id = {p:String} AND user_id = {u:String}", True),
    # Last: the transition deletes above read them.
    Delete("events", "project_id = {p:String} AND visitor_id = {v:String}"),
)
# After the users' rebuild: they are how a retry or a replay of an erasure that failed
# past the deletes above still finds the users the visitor counted for.
IDENTITIES_LAST = Delete(
    "visitor_identities", "project_id = {p:String} AND visitor_id = {v:String}"
)


def _field(name: str, value: str) -> str:
    """`"name":"value"` as orjson writes it inside an event's JSON."""
    return orjson.dumps({name: value}).decode()[1:-1]


def parameters(erasure: Erasure, users: list[str]) -> dict[str, Any]:
    return {
        "p": erasure.project_id,
        "v": erasure.visitor_id,
        "u": erasure.user_id,
        "key": visitor_key(erasure.project_id, erasure.visitor_id),
        "users": users,
        "vid_field": _field("vid", erasure.visitor_id),
        "p_field": _field("p", erasure.project_id),
    }


@dataclass(frozen=True, slots=True)
class Segment:
    """Messages to process as events, then (maybe) the erasure that follows them."""

    messages: list[LogMessage]
    erasure: tuple[LogMessage, Erasure] | None


def segments(messages: list[LogMessage]) -> Iterator[Segment]:
    """Split a poll at its erasure records, keeping log order. A record that starts like
    an erasure but cannot be read goes on as a message, to be dead-lettered by the
    decoder."""
    run: list[LogMessage] = []
    for message in messages:
        if is_erasure(message.value):
            try:
                erasure = decode_erasure(message.value)
            except InvalidErasure:
                run.append(message)
                continue
            yield Segment(run, (message, erasure))
            run = []
        else:
            run.append(message)
    if run:
        yield Segment(run, None)


class Eraser:
    def __init__(
        self,
        clickhouse: ClickHouse,
        states: HeldStates,
        users: UserRebuilder,
        log: Log,
        topics: tuple[str, str],
    ) -> None:
        self._ch = clickhouse
        self._states = states
        self._users = users
        self._log = log
        # The events topic and the dead-letter topic.
        self._topics = topics

    async def erase(self, erasure: Erasure, position: tuple[int, int]) -> None:
        """Delete the visitor from every table, from memory and, where the log backend
        can, from the log (its records before the erasure's `position`, and its dead
        letters). Idempotent: a retry or a replay does it again, and an unknown visitor
        deletes nothing."""
        started = time.monotonic()
        project = erasure.project_id
        rows = await self._ch.query_rows(USERS_SQL, {"p": project, "v": erasure.visitor_id})
        users = sorted({str(u) for (u,) in rows} - {erasure.user_id})
        params = parameters(erasure, users)
        for delete in ERASE_ORDER:
            if delete.user_only and not erasure.user_id:
                continue
            await self._ch.command(delete.sql(), params)
        if users:
            # The users it counted for, from the visitors left; no transitions are new.
            rebuilt = await self._users.rebuild({(project, u) for u in users}, set())
            await self._ch.insert("funnel_state", rebuilt.funnel_states, FUNNEL_STATE_COLUMNS)
        await self._ch.command(IDENTITIES_LAST.sql(), params)
        self._states.forget(visitor_key(project, erasure.visitor_id))
        events, dead_letters = self._topics
        await self._log.forget_key(events, erasure.partition_key(), position)
        await self._log.forget_key(dead_letters, erasure.partition_key(), None)
        metrics.PROCESSOR_ERASURES.inc()
        metrics.PROCESSOR_ERASURE_SECONDS.observe(time.monotonic() - started)
