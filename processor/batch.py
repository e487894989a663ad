"""Batch: what polls have applied and not yet written, and when to write it.

A batch is written when it holds `max_messages` messages or is `max_seconds` old,
whichever comes first (snuba's Reduce step), or sooner, once `idle_seconds` old, when
the last poll found the log drained. Every write costs ClickHouse a fixed time per table,
so under a backlog batches grow to the large bounds and the processor keeps up, while
with nothing waiting an event is written within `idle_seconds`. It is plain data; the
sink writes it and the committer commits its `next_offsets` afterwards.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from funnelstream.log import LogRecord
from processor.dedupe import Key, Position
from processor.rows import Row
from processor.state import VisitorState
from processor.transform import Outputs


@dataclass(slots=True)
class Batch:
    outputs: Outputs = field(default_factory=Outputs)
    dead_letters: list[Row] = field(default_factory=list)
    dead_letter_records: list[LogRecord] = field(default_factory=list)
    # Visitor key → (partition, state) of every visitor the batch changed.
    dirty: dict[str, tuple[int, VisitorState]] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    # The first offset taken per partition: with `next_offsets`, the span the batch holds.
    first_offsets: dict[int, int] = field(default_factory=dict)
    received_ms: list[int] = field(default_factory=list)
    messages: int = 0
    started: float = 0.0
    # The last poll took less than it asked for: nothing more was waiting in the log.
    drained: bool = False
    # The batch's accepted events, for dedupe until they are written (processor/dedupe.py).
    accepted: dict[Key, Position] = field(default_factory=dict)
    # Names the batch in the log lines made while it is applied and written
    # (funnelstream/logs.py): its dead letters, write retries and re-folds.
    id: str = field(default_factory=lambda: secrets.token_hex(4))

    def empty(self) -> bool:
        return self.messages == 0

    def count(self, partition: int, offset: int) -> None:
        """One more message taken from the log, whatever becomes of it."""
        if self.messages == 0:
            self.started = time.monotonic()
        self.messages += 1
        self.first_offsets.setdefault(partition, offset)
        self.next_offsets[partition] = offset + 1


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_messages: int
    max_seconds: float
    # The most messages one poll takes: small polls keep each synchronous apply short,
    # so an ingest or query API sharing the event loop (embedded mode) is never stalled.
    poll_max_messages: int
    # How old a batch is written once the log is drained (at most `max_seconds`).
    idle_seconds: float = 0.25

    def poll_limit(self, batch: Batch) -> int:
        room = self.max_messages - batch.messages
        return min(max(room, 1), self.poll_max_messages)

    def polled(self, batch: Batch, asked: int, got: int) -> None:
        """Note what a poll returned: fewer than asked means the log is drained."""
        batch.drained = got < asked

    def _deadline(self, batch: Batch) -> float:
        return min(self.idle_seconds, self.max_seconds) if batch.drained else self.max_seconds

    def poll_timeout(self, batch: Batch, now: float) -> float:
        """How long a poll may wait: until the batch is due, or one batch period."""
        if batch.empty():
            return self.max_seconds
        return max(0.0, self._deadline(batch) - (now - batch.started))

    def due(self, batch: Batch, now: float) -> bool:
        return not batch.empty() and (
            batch.messages >= self.max_messages or now - batch.started >= self._deadline(batch)
        )
