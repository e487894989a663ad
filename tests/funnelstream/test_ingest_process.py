"""The owner's handle on serve's ingest process, with real child processes: one that
keeps failing at its start stops serve, one that runs is stopped by SIGTERM on stop."""

from __future__ import annotations

import asyncio
import sys
import time

from funnelstream.backoff import BackoffPolicy
from funnelstream.ingest_process import QUICK_EXITS_FATAL, IngestProcess, listening_socket
from funnelstream.supervise import Components, Supervisor


class Scripted(IngestProcess):
    """An ingest process whose program is `code` (a real process, not `serve-ingest`)."""

    def __init__(self, code: str) -> None:
        super().__init__(listening_socket("127.0.0.1", 0), "http://127.0.0.1:9", "warning")
        self._code = code

    def command(self) -> list[str]:
        return [sys.executable, "-c", self._code]


async def test_a_process_that_keeps_failing_at_its_start_stops_serve() -> None:
    child = Scripted("import sys; sys.exit(3)")
    fatal = asyncio.Event()
    child.on_fatal = fatal.set
    components = Components()
    stop = asyncio.Event()
    supervisor = Supervisor(components, BackoffPolicy(0.01, 0.02), stop)
    supervisor.start("ingest_process", child.run)
    await asyncio.wait_for(fatal.wait(), 30)
    assert (
        child.fatal == f"the ingest process failed {QUICK_EXITS_FATAL} times right after starting"
    )
    assert "exited with 3" in components.failing()["ingest_process"]
    await supervisor.shutdown()


async def test_stop_ends_a_running_process_with_sigterm() -> None:
    # It stops on SIGTERM, as uvicorn does after draining its requests.
    child = Scripted(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "time.sleep(60)\n"
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(child.run(stop))
    while child.pid is None:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 5  # SIGTERM, not the kill after STOP_SECONDS
    assert child.fatal is None
