"""The log interface that ingest writes to and the processor reads from.

The shape follows Kafka because Kafka is the production backend: a topic has a fixed
number of partitions, a record's key picks its partition (so one visitor stays in one
partition and its events keep their order), every partition is an append-only sequence of
offsets, and a consumer group commits, per partition, the *next* offset to read.

Rules every backend keeps and every caller may rely on (both backends pass
tests/funnelstream/log/test_contract.py):

* `Log.ensure_topic` comes first. Producers and consumers of a topic start only after it
  has returned: Kafka runs with topic auto-creation off, so appending to or subscribing
  to a missing topic fails there (the embedded log would create it with its default
  partition count, which may not be what was meant).
* Per partition, `poll` returns messages in offset order, at most once per assignment.
  A message can come again after a crash or a rebalance (from the last commit on), so
  what a consumer does with it must be idempotent.
* `RebalanceListener.on_revoked` runs before partitions are given up and
  `on_assigned` before the first message of newly held partitions; neither runs for an
  empty set of partitions. `assignment()` is already empty when `on_revoked` starts
  (the partitions it names are the ones to flush and commit for).
* A commit can fail because another member owns the partitions now (the group
  rebalanced without us, e.g. `on_revoked` took longer than the rebalance timeout).
  It raises `LogUnavailable` like an outage, and retrying cannot succeed: drop the state
  of those partitions; their new owner resumes from the last successful commit.
* An exception raised by a listener callback is not lost: the next `poll` raises it.
* `seek` on a partition this consumer does not hold raises `ValueError`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass


class LogUnavailable(Exception):
    """The log could not durably take or give records right now (broker down, disk full).

    Infrastructure, not a bad message: callers back off and retry, and ingest answers 503.
    """


# Not frozen: ingest makes one per event, and a frozen dataclass's constructor costs
# several times a plain one's. Nothing assigns its fields after construction.
@dataclass(slots=True)
class LogRecord:
    """A record to append: `key` chooses the partition."""

    key: bytes
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class LogMessage:
    """A record read back, with where it lives in the log."""

    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int


PartitionsCallback = Callable[[frozenset[int]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RebalanceListener:
    """Called by a consumer when partitions move to or away from it.

    `on_revoked` runs before the partitions are given up: flush and commit there.
    `on_assigned` runs before the first message of the new partitions is returned:
    restore per-partition state there (and optionally `seek`).
    """

    on_assigned: PartitionsCallback
    on_revoked: PartitionsCallback


class LogProducer(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def append(self, records: Sequence[LogRecord]) -> None:
        """Append records; return only once every one of them is durably stored.

        Raises `LogUnavailable` when that cannot be promised; then none, some or all of
        the records may be stored, and the caller must treat them all as not accepted
        (retries are safe because events carry an `event_id` the processor dedupes on).
        """


class LogConsumer(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """Leave the group. Revocation callbacks run for the partitions still held."""

    @abc.abstractmethod
    async def poll(self, max_records: int, timeout_s: float) -> list[LogMessage]:
        """Return up to `max_records` messages (possibly none after `timeout_s`).

        Within a partition, messages come in offset order. Raises `LogUnavailable` when
        the log cannot be read (back off and poll again), and re-raises the first
        exception a rebalance callback raised.
        """

    @abc.abstractmethod
    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit, per partition, the next offset this group should read.

        Raises `LogUnavailable` when the log is down or the partitions belong to another
        member now (see the module docstring); the caller cannot tell which, so it keeps
        the offsets pending while it still holds the partitions and drops them on revoke.
        """

    @abc.abstractmethod
    async def committed(self, partition: int) -> int | None:
        """The group's committed offset for a partition, if any."""

    @abc.abstractmethod
    def seek(self, partition: int, offset: int) -> None:
        """Make the next poll of `partition` start at `offset`.

        Raises `ValueError` if this consumer does not hold `partition` (it may call this
        from `on_assigned` for the partitions being assigned).
        """

    @abc.abstractmethod
    def assignment(self) -> frozenset[int]:
        """The partitions this member holds now; empty from the start of `on_revoked`."""

    async def fenced(self, written: Mapping[int, int]) -> bool:
        """Whether the group has already moved on without this member (it stalled past
        its session): what it holds belongs to others now, even before `on_revoked` says
        so, and its batch must not be written; the new owners replay it from the last
        commit. `written`: per partition, the offset before which everything is written,
        which may be committed to find out. A backend that cannot lose a member this way
        never is."""
        return False

    @abc.abstractmethod
    async def end_offsets(self) -> dict[int, int]:
        """The next offset to be written, per assigned partition (for lag)."""


class Log(abc.ABC):
    """A backend: creates producers and consumers for named topics."""

    @abc.abstractmethod
    async def ensure_topic(self, topic: str, partitions: int) -> None:
        """Create `topic` with `partitions` if missing; call before any producer or
        consumer of it starts. An existing topic keeps its partition count."""

    @abc.abstractmethod
    def producer(self, topic: str) -> LogProducer: ...

    @abc.abstractmethod
    def consumer(
        self, topic: str, group: str, listener: RebalanceListener | None = None
    ) -> LogConsumer: ...

    async def forget_key(self, topic: str, key: bytes, before: tuple[int, int] | None) -> int:
        """Drop the records of `key` (all, or those before (partition, offset)); return
        how many went. For erasure (processor/erase.py). A backend that cannot drop single
        records keeps them until its retention: Kafka does (0)."""
        return 0

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources shared by producers and consumers."""
