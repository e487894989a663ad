"""The supervisor with real asyncio tasks: crashes are logged and restarted with backoff,
each component's state is kept, and stop ends everything within the bound."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from funnelstream import metrics
from funnelstream.backoff import BackoffPolicy
from funnelstream.supervise import Components, Supervisor


def restarts_metric(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "funnelstream_component_restarts_total", {"component": name}
    )
    return value or 0.0


def up_metric(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("funnelstream_component_up", {"component": name})


def supervisor(stop: asyncio.Event, **kwargs: float) -> Supervisor:
    return Supervisor(Components(), BackoffPolicy(0.05, 0.1), stop, **kwargs)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_crash_is_logged_restarted_with_backoff_and_tracked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    sup = supervisor(stop, settle_seconds=0.1)
    starts: list[float] = []
    before = restarts_metric("crashy")

    async def crashy(stop: asyncio.Event) -> None:
        starts.append(time.monotonic())
        if len(starts) <= 2:
            raise OverflowError(f"crash {len(starts)}")
        await stop.wait()

    with caplog.at_level(logging.ERROR, logger="funnelstream.supervise"):
        sup.start("crashy", crashy)
        await until(lambda: len(starts) == 3)
    state = sup.components.state("crashy")
    assert state.restarts == 2
    assert restarts_metric("crashy") - before == 2
    # Not ready until the restarted task has run a while without crashing.
    assert not state.ok and state.error == "OverflowError: crash 2"
    assert state.failed_at is not None and abs(state.failed_at - time.time()) < 5
    assert sup.components.failing() == {"crashy": "OverflowError: crash 2"}
    assert up_metric("crashy") == 0
    # The backoff doubles between restarts: 0.05 s, then 0.1 s.
    assert starts[1] - starts[0] >= 0.05 and starts[2] - starts[1] >= 0.1
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 2
    assert crashes[0].exc_info is not None and crashes[0].exc_info[0] is OverflowError
    assert "Traceback" in caplog.text and "crash 1" in caplog.text

    await until(lambda: sup.components.state("crashy").ok)
    assert sup.components.failing() == {} and up_metric("crashy") == 1
    await sup.shutdown()
    assert len(starts) == 3


async def test_a_task_ending_at_stop_is_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    sup = supervisor(stop)
    ended = asyncio.Event()

    async def worker(stop: asyncio.Event) -> None:
        await stop.wait()
        ended.set()

    sup.start("worker", worker)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await sup.shutdown()
    assert ended.is_set() and time.monotonic() - started < 1
    state = sup.components.state("worker")
    assert state.ok and state.restarts == 0 and state.error is None
    assert "crashed" not in caplog.text


async def test_a_task_returning_before_stop_is_restarted() -> None:
    stop = asyncio.Event()
    sup = supervisor(stop)
    runs = 0

    async def quitter(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await stop.wait()

    sup.start("quitter", quitter)
    await until(lambda: runs == 2)
    assert sup.components.state("quitter").error == (
        "RuntimeError: quitter returned before stop was set"
    )
    await sup.shutdown()


async def test_stop_during_the_backoff_restarts_nothing() -> None:
    stop = asyncio.Event()
    sup = Supervisor(Components(), BackoffPolicy(30.0, 60.0), stop)
    runs = 0

    async def always_crashes(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        raise ValueError("bad")

    sup.start("doomed", always_crashes)
    await until(lambda: runs == 1 and not sup.components.state("doomed").ok)
    started = time.monotonic()
    await sup.shutdown()
    assert time.monotonic() - started < 1  # did not sit out the 30 s backoff
    assert runs == 1 and sup.components.state("doomed").restarts == 0


async def test_a_task_ignoring_stop_is_cancelled_after_the_bound() -> None:
    stop = asyncio.Event()
    sup = supervisor(stop, shutdown_seconds=0.2)
    cancelled = asyncio.Event()

    async def stubborn(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sup.start("stubborn", stubborn)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await sup.shutdown()
    assert cancelled.is_set()
    assert 0.2 <= time.monotonic() - started < 2


def test_probes_report_parts_that_are_not_tasks() -> None:
    components = Components()
    problem: list[str | None] = [None]
    components.add_probe("probed", lambda: problem[0])
    assert components.failing() == {} and up_metric("probed") == 1
    problem[0] = "write failing, retrying in 0.4s"
    assert components.failing() == {"probed": "write failing, retrying in 0.4s"}
    assert up_metric("probed") == 0

    def broken() -> str | None:
        raise RuntimeError("no answer")

    components.add_probe("broken_probe", broken)
    assert components.failing()["broken_probe"] == "probe failed: RuntimeError: no answer"
