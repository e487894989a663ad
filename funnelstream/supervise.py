"""Background tasks under supervision, and the readiness of the parts of this process.

A background task (the processor, the catalog refresh, log retention, ...) that raises is
not left dead while ingest keeps answering 202: the supervisor logs the traceback, marks
its component failed (shown by `/readyz`, `/healthz` and `funnelstream_component_up`),
and starts it again after the shared backoff (funnelstream/backoff.py). A restarted task
counts as ready again once it has run `settle_seconds` without crashing.

Parts that are not tasks (ClickHouse, the log) are reported by probes: a function,
asked whenever readiness is read, that returns why the part is not ready, or None.

Shutdown sets the stop event, which ends restarts; tasks get `shutdown_seconds` to return
and are cancelled after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from funnelstream import metrics
from funnelstream.backoff import BackoffPolicy

log = logging.getLogger(__name__)

Probe = Callable[[], str | None]
TaskFactory = Callable[[asyncio.Event], Awaitable[None]]


def describe(exc: BaseException) -> str:
    """How a failure reads in `/readyz`: the exception type and its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class ComponentState:
    ok: bool = True
    error: str | None = None
    # Wall-clock time of the last failure (seconds since the epoch).
    failed_at: float | None = None
    restarts: int = 0


class Components:
    """Named parts of this process and whether each is ready."""

    def __init__(self) -> None:
        self._states: dict[str, ComponentState] = {}
        self._probes: dict[str, list[Probe]] = {}

    def register(self, name: str) -> ComponentState:
        state = self._states.setdefault(name, ComponentState())
        metrics.COMPONENT_UP.labels(name).set(1 if state.ok else 0)
        return state

    def add_probe(self, name: str, probe: Probe) -> None:
        self._probes.setdefault(name, []).append(probe)
        self.register(name)

    def mark_ok(self, name: str) -> None:
        state = self.register(name)
        state.ok = True
        metrics.COMPONENT_UP.labels(name).set(1)

    def mark_failed(self, name: str, reason: str) -> None:
        state = self.register(name)
        state.ok = False
        state.error = reason
        state.failed_at = time.time()
        metrics.COMPONENT_UP.labels(name).set(0)

    def state(self, name: str) -> ComponentState:
        return self._states[name]

    def names(self) -> list[str]:
        return sorted(self._states)

    def failing(self) -> dict[str, str]:
        """Component → why it is not ready; empty when all are. Asks every probe, and
        brings the `component_up` gauge up to date on the way."""
        failed: dict[str, str] = {}
        for name, state in sorted(self._states.items()):
            reasons = [r for probe in self._probes.get(name, ()) if (r := _ask(probe))]
            if not state.ok and state.error is not None:
                reasons.insert(0, state.error)
            if reasons:
                failed[name] = "; ".join(reasons)
            metrics.COMPONENT_UP.labels(name).set(0 if reasons else 1)
        return failed


def _ask(probe: Probe) -> str | None:
    try:
        return probe()
    except Exception as exc:  # a probe that cannot answer says so instead of failing /readyz
        return f"probe failed: {describe(exc)}"


class Supervisor:
    def __init__(
        self,
        components: Components,
        policy: BackoffPolicy,
        stop: asyncio.Event,
        *,
        settle_seconds: float = 10.0,
        shutdown_seconds: float = 15.0,
    ) -> None:
        self.components = components
        self._policy = policy
        self._stop = stop
        self._settle_seconds = settle_seconds
        self._shutdown_seconds = shutdown_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run `factory(stop)` as component `name` until stop is set, restarting it after
        a crash. `factory` is called again for every restart, so it can build fresh state
        (a half-applied batch must not survive a crash)."""
        if name in self._tasks:
            raise ValueError(f"component {name!r} is supervised already")
        self.components.register(name)
        metrics.COMPONENT_RESTARTS.labels(name)  # exported as 0 before the first restart
        self._tasks[name] = asyncio.create_task(self._supervise(name, factory), name=name)

    async def _supervise(self, name: str, factory: TaskFactory) -> None:
        def before(state: RetryCallState) -> None:
            if state.attempt_number > 1 and not self._stop.is_set():
                self.components.state(name).restarts += 1
                metrics.COMPONENT_RESTARTS.labels(name).inc()
                log.info("restarting %s (restart %d)", name, state.attempt_number - 1)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            assert exc is not None  # tenacity sleeps only after a failed attempt
            self.components.mark_failed(name, describe(exc))
            log.error(
                "%s crashed; restarting in %.1fs",
                name,
                state.upcoming_sleep,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

        def after_stop(state: RetryCallState) -> None:
            # The stop event came while the task was crashing: report it, restart nothing.
            exc = state.outcome.exception() if state.outcome is not None else None
            if exc is not None:
                self.components.mark_failed(name, describe(exc))
                log.error(
                    "%s crashed while stopping", name, exc_info=(type(exc), exc, exc.__traceback__)
                )

        retrying = AsyncRetrying(
            # Exception, not BaseException: a cancelled task is shutting down, not crashed.
            retry=retry_if_exception_type(Exception),
            stop=lambda _: self._stop.is_set(),
            wait=self._policy.wait,
            sleep=self._sleep,
            before=before,
            before_sleep=before_sleep,
            retry_error_callback=after_stop,
        )
        await retrying(self._run_once, name, factory)

    async def _run_once(self, name: str, factory: TaskFactory) -> None:
        if self._stop.is_set():
            return  # stopped during the backoff before this restart
        runner = asyncio.ensure_future(factory(self._stop))
        try:
            if not self.components.state(name).ok:
                done, _ = await asyncio.wait({runner}, timeout=self._settle_seconds)
                if not done:
                    self.components.mark_ok(name)
            await runner
        finally:
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
        if not self._stop.is_set():
            # A background task runs until stop; returning early leaves its work undone.
            raise RuntimeError(f"{name} returned before stop was set")

    async def _sleep(self, seconds: float) -> None:
        # Woken by stop, so a shutdown never waits out a backoff.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def shutdown(self) -> None:
        """Set stop, give every task `shutdown_seconds` to return, then cancel the rest."""
        self._stop.set()
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._shutdown_seconds)
        for task in pending:
            log.warning(
                "%s did not stop within %.0fs; cancelling", task.get_name(), self._shutdown_seconds
            )
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("%s failed while stopping: %s", task.get_name(), describe(result))
