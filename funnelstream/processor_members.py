"""The processor group members of one process, and how one of them is killed.

`FUNNELSTREAM_PROCESSOR_MEMBERS=N` runs N `Processor`s in this process, each its own
Kafka consumer in the one consumer group, holding the fold state of the partitions the
group gave it, and each its own supervised component (`processor.1` ... `processor.N`;
one member keeps the name `processor`). With the embedded ClickHouse engine this is the
only way to run several members: the engine opens in one process, and the members
write through it. With a ClickHouse server, run one member per process instead
(`docs/scaling.md`).

A member cannot be `kill -9`ed on its own, so `kill` abandons it the way a crash would:
its task is cancelled where it stands, nothing batched is written, no offset committed,
its states are dropped; the group is told at once (the consumer leaves the group), where
a killed process's partitions wait for the session timeout. The supervisor shows the
member failed in `/readyz` and starts a fresh one after the backoff; it counts as ready
once it has run the supervisor's settle time. The new owners of its partitions replay
from the last commit, skipping per visitor what the stored states absorbed.

What the process reports (lag, partitions, stage gauges) is the sum over its members.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from functools import partial

from funnelstream import metrics
from funnelstream.supervise import Supervisor
from processor.pipeline import Processor

log = logging.getLogger(__name__)

ProcessorFactory = Callable[[], Processor]


class MemberKilled(Exception):
    """A member abandoned on request (`ProcessorMembers.kill`): nothing written or
    committed past what it had committed before."""


class _Member:
    def __init__(self, name: str) -> None:
        self.name = name
        # The processor of this member's current life; a restart makes a fresh one.
        self.processor: Processor | None = None
        self.kill = asyncio.Event()


class ProcessorMembers:
    def __init__(self, count: int, make_processor: ProcessorFactory) -> None:
        names = ["processor"] if count == 1 else [f"processor.{i}" for i in range(1, count + 1)]
        self._members = [_Member(name) for name in names]
        self._make_processor = make_processor

    def names(self) -> list[str]:
        return [m.name for m in self._members]

    def start(self, supervisor: Supervisor) -> None:
        for member in self._members:
            supervisor.start(member.name, partial(self._run, member))

    async def _run(self, member: _Member, stop: asyncio.Event) -> None:
        # A fresh processor for every (re)start: a crashed one may hold visitor state
        # applied past what was written, which must be reloaded instead.
        processor = self._make_processor()
        member.processor = processor
        member.kill.clear()
        work = asyncio.create_task(processor.run(stop), name=f"{member.name} loop")
        killed = asyncio.create_task(member.kill.wait(), name=f"{member.name} kill")
        try:
            await asyncio.wait({work, killed}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return await work  # returned at stop, or raised: the supervisor's to judge
            # Cancelled mid-step: `Processor.run` writes and commits nothing once
            # interrupted, and its consumer leaves the group on the way out.
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise MemberKilled(f"{member.name} killed; its partitions went to the others")
        finally:
            killed.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work

    def kill(self, name: str | None = None) -> str | None:
        """Abandon member `name`, or by default the one holding the most partitions (the
        lowest-numbered on a tie); the name of the member killed, None if none runs."""
        running = [m for m in self._members if m.processor is not None and not m.kill.is_set()]
        if name is not None:
            running = [m for m in running if m.name == name]
        if not running:
            return None
        victim = max(running, key=lambda m: len(self._assignment_of(m)))
        log.warning("killing %s (holding partitions %s)", victim.name, self._assignment_of(victim))
        victim.kill.set()
        return victim.name

    # -- what the process reports: the sum over its members --------------------------

    def processors(self) -> list[Processor]:
        return [m.processor for m in self._members if m.processor is not None]

    def assignment(self) -> frozenset[int]:
        return frozenset(itertools.chain.from_iterable(self.held_by().values()))

    def held_by(self) -> dict[str, list[int]]:
        """Partitions each member holds now."""
        return {m.name: sorted(self._assignment_of(m)) for m in self._members}

    @staticmethod
    def _assignment_of(member: _Member) -> frozenset[int]:
        return member.processor.assignment() if member.processor is not None else frozenset()

    @property
    def processed_messages(self) -> int:
        return sum(p.processed_messages for p in self.processors())

    async def lag(self) -> dict[int, int]:
        """Messages not yet committed per partition held by any member; raises
        `LogUnavailable` as `Processor.lag` does."""
        lags: dict[int, int] = {}
        for processor in self.processors():
            lags.update(await processor.lag())
        return lags

    def problem(self, part: str) -> str | None:
        """Why `part` ("clickhouse", "log") is failing for any member, or None."""
        reasons = [p.problems().get(part) for p in self.processors()]
        found = [r for r in reasons if r]
        return "; ".join(dict.fromkeys(found)) if found else None

    def export_gauges(self) -> None:
        """Stage gauges and visitors in memory from every member's states (at a scrape):
        each member alone would overwrite the others'."""
        processors = self.processors()
        if not processors:
            return
        states = itertools.chain.from_iterable(p.held_states() for p in processors)
        processors[0].export_funnel_stages(states)
        metrics.PROCESSOR_VISITORS.set(sum(p.held_visitors() for p in processors))
