"""The log interface that ingest writes to and the processor reads from.

The shape follows Kafka because Kafka is the production backend: a topic has a fixed
number of partitions, a record's key picks its partition (so one visitor stays in one
partition and its events keep their order), every partition is an append-only sequence of
offsets, and a consumer group commits, per partition, the *next* offset to read.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass


class LogUnavailable(Exception):
    """The log could not durably take or give records right now (broker down, disk full).

    Infrastructure, not a bad message: callers back off and retry, and ingest answers 503.
    """


@dataclass(frozen=True, slots=True)
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

        Within a partition, messages come in offset order.
        """

    @abc.abstractmethod
    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit, per partition, the next offset this group should read."""

    @abc.abstractmethod
    async def committed(self, partition: int) -> int | None:
        """The group's committed offset for a partition, if any."""

    @abc.abstractmethod
    def seek(self, partition: int, offset: int) -> None:
        """Make the next poll of `partition` start at `offset`."""

    @abc.abstractmethod
    def assignment(self) -> frozenset[int]:
        """The partitions this member holds now."""

    @abc.abstractmethod
    async def end_offsets(self) -> dict[int, int]:
        """The next offset to be written, per assigned partition (for lag)."""


class Log(abc.ABC):
    """A backend: creates producers and consumers for named topics."""

    @abc.abstractmethod
    async def ensure_topic(self, topic: str, partitions: int) -> None: ...

    @abc.abstractmethod
    def producer(self, topic: str) -> LogProducer: ...

    @abc.abstractmethod
    def consumer(
        self, topic: str, group: str, listener: RebalanceListener | None = None
    ) -> LogConsumer: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources shared by producers and consumers."""
