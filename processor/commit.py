"""Commit: the next offset per partition, only for batches already written (arroyo's
CommitOffsets, "always the last step").

A failed commit keeps its offsets pending; they go with the next commit, or alone after a
backoff. Committing late is always safe: a replay after a crash is idempotent
(processor/state.py).
"""

from __future__ import annotations

import asyncio
import logging

from funnelstream import metrics
from funnelstream.backoff import Backoff
from funnelstream.log import LogConsumer, LogUnavailable
from processor.retry import Retrier

log = logging.getLogger(__name__)


class Committer:
    def __init__(self, retrier: Retrier, timeout_seconds: float) -> None:
        self._retrier = retrier
        self._timeout = timeout_seconds
        self._backoff = Backoff(retrier.policy)
        # Written to ClickHouse, not committed yet: partition → next offset.
        self.pending: dict[int, int] = {}

    def written(self, next_offsets: dict[int, int]) -> None:
        self.pending.update(next_offsets)

    def retry_due(self) -> bool:
        """An earlier commit failed and its backoff is over."""
        return bool(self.pending) and self._backoff.due()

    async def commit(self, consumer: LogConsumer, revoking: frozenset[int]) -> None:
        # Only partitions this member still owns: an offset of a partition that moved
        # stays pending until the revocation decides about it (`forget`).
        owned = consumer.assignment() | revoking
        offsets = {p: o for p, o in self.pending.items() if p in owned}
        if not offsets:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await consumer.commit(offsets)
        except (LogUnavailable, TimeoutError) as exc:
            metrics.PROCESSOR_LOG_ERRORS.labels("commit").inc()
            self._retrier.log_failed("commit", exc)
            self._backoff.failed()
            log.warning(
                "commit of %s failed; kept pending, retry in %.1fs: %s",
                offsets,
                self._backoff.delay,
                exc,
            )
            return
        self._backoff.reset()
        self._retrier.log_ok("commit")
        for partition, offset in offsets.items():
            if self.pending.get(partition) == offset:
                del self.pending[partition]
            metrics.PROCESSOR_COMMITTED_OFFSET.labels(str(partition)).set(offset)

    def forget(self, partitions: frozenset[int]) -> dict[int, int]:
        """Drop the pending offsets of revoked partitions; return them."""
        return {p: self.pending.pop(p) for p in partitions if p in self.pending}
