"""Erasure requests: which visitors a request covers, and the durable append of their
erasure records to the events log (schemas/erasure.py).

The query API reads ClickHouse only, except here: an erasure must travel the log to reach
the processor in order with the visitor's events. The producer is opened on the first
request, not at start, so a query API whose log is away still serves reports; a request
then answers 503 and can be sent again (an erasure done twice is done once).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.log import Log, LogProducer, LogRecord
from schemas.erasure import Erasure, encode_erasure

# Every visitor that ever sent the user id, and those the processor counts for it.
USER_VISITORS_SQL = """
SELECT visitor_id FROM events
WHERE project_id = {p:String} AND user_id = {u:String}
UNION DISTINCT
SELECT visitor_id FROM visitor_identities
WHERE project_id = {p:String} AND user_id = {u:String}
"""


async def user_visitors(ch: ClickHouse, project: str, user: str) -> list[str]:
    """The visitors of a user stored now. Events still on their way through the log are
    not among them: a user erased while its events lag is erased again after them."""
    rows = await ch.query_rows(USER_VISITORS_SQL, {"p": project, "u": user})
    return sorted({str(v) for (v,) in rows})


def new_erasure_id() -> str:
    return str(uuid.uuid4())


def erasures(erasure_id: str, project: str, visitors: list[str], user: str = "") -> list[Erasure]:
    """One record per visitor, all under one erasure id."""
    now_ms = int(time.time() * 1000)
    return [Erasure(project, v, erasure_id, now_ms, user) for v in visitors]


class ErasureLog:
    """Appends erasure records; `open_log` gives the backend on first use (the app's own
    when it has one, `owned` False: closed by the app, not here)."""

    def __init__(
        self, open_log: Callable[[], Log], topic: str, partitions: int, *, owned: bool
    ) -> None:
        self._open_log = open_log
        self._topic = topic
        self._partitions = partitions
        self._owned = owned
        self._backend: Log | None = None
        self._producer: LogProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> LogProducer:
        async with self._lock:
            if self._producer is None:
                if self._backend is None:
                    self._backend = self._open_log()
                await self._backend.ensure_topic(self._topic, self._partitions)
                producer = self._backend.producer(self._topic)
                await producer.start()
                self._producer = producer
            return self._producer

    async def append(self, records: list[Erasure], kind: str) -> None:
        """Return once every record is durably in the log; raises `LogUnavailable`."""
        if not records:
            return
        producer = await self._started()
        now_ms = int(time.time() * 1000)
        await producer.append(
            [LogRecord(r.partition_key(), encode_erasure(r), now_ms) for r in records]
        )
        metrics.ERASURES_REQUESTED.labels(kind).inc(len(records))

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._backend is not None and self._owned:
            await self._backend.close()
        self._backend = None
