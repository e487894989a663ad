"""Decode: log messages → events; an undecodable message becomes a dead letter.

A bad message is not broken infrastructure (arroyo's `InvalidMessage`): it is counted by
reason, kept in the batch as a `dead_letters` row and a record for the dead-letter topic,
and the partition flows on. Its offset still counts, so the commit moves past it.
"""

from __future__ import annotations

import time

import orjson

from funnelstream import metrics
from funnelstream.log import LogMessage, LogRecord
from processor.batch import Batch
from processor.dedupe import Delivery
from processor.rows import Row, ms_to_datetime
from schemas.events import InvalidMessage, decode


class Decoder:
    def __init__(self, topic: str) -> None:
        # Named in each dead-letter record, so a reader knows where it came from.
        self._topic = topic

    def decode(self, messages: list[LogMessage], batch: Batch) -> list[Delivery]:
        """Count the messages into the batch; return the decoded ones."""
        now_ms = int(time.time() * 1000)
        deliveries = []
        for message in messages:
            batch.count(message.partition, message.offset)
            try:
                event = decode(message.value)
            except InvalidMessage as exc:
                metrics.PROCESSOR_DEAD_LETTERS.labels(exc.reason).inc()
                batch.dead_letters.append(dead_letter_row(message, exc, now_ms))
                batch.dead_letter_records.append(self._record(message, exc, now_ms))
                continue
            deliveries.append(Delivery(message.partition, message.offset, event))
        metrics.PROCESSOR_MESSAGES.inc(len(messages))
        return deliveries

    def _record(self, message: LogMessage, exc: InvalidMessage, now_ms: int) -> LogRecord:
        body = {
            "reason": exc.reason,
            "detail": exc.detail[:1000],
            "topic": self._topic,
            "partition": message.partition,
            "offset": message.offset,
            "payload": message.value.decode("utf-8", "replace"),
        }
        return LogRecord(message.key, orjson.dumps(body), now_ms)


def dead_letter_row(message: LogMessage, exc: InvalidMessage, now_ms: int) -> Row:
    return (
        ms_to_datetime(now_ms),
        "processor",
        exc.reason,
        exc.detail[:1000],
        message.partition,
        message.offset,
        message.value.decode("utf-8", "replace")[:10000],
        project_of_key(message.key),
    )


def project_of_key(key: bytes) -> str:
    """The project of a log key (`Event.partition_key`): a dead letter's payload may be
    unreadable, its key was written by ingest for a known project."""
    return key.split(b"\x1f", 1)[0].decode("utf-8", "replace")[:200] if b"\x1f" in key else ""
