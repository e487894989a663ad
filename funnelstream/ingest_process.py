"""`funnelstream serve` as two processes: the owner, and ingest in a process of its own.

Why: the processor and ingest sharing one interpreter take turns on one core, so a busy
processor starves ingest (issue 13); and the embedded engine opens in one process only.
So the process `serve` starts is the owner: it opens the embedded engine and runs the
processor and the query API on a loopback port. It binds the public port itself and
hands the socket to an ingest process it starts (`funnelstream serve-ingest`), which
answers ingest there and forwards the rest to the owner (funnelstream/front.py). The
ingest process imports no engine (~250 MB less) and gets its keys from the owner's
snapshot (funnelstream/key_store.py); both append to and read one embedded log, whose
SQLite file takes writers from several processes.

The ingest process runs under the owner's supervisor as the "ingest_process" component:
if it exits, `/readyz` says so and it is started again after the usual backoff, on the
same socket (connections wait in its backlog meanwhile). If it keeps failing right after
its start, `serve` stops with exit code 1 rather than run without ingest. On SIGTERM or
SIGINT the owner stops it first, so what it accepted is in the log before the processor
stops. If the owner dies (kill -9), the ingest process notices within
`PARENT_CHECK_SECONDS` and stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TOKEN_ENV = "FUNNELSTREAM_SERVE_FORWARD_TOKEN"
STOP_SECONDS = 30.0  # for in-flight appends to finish and answer
PARENT_CHECK_SECONDS = 0.2
# Exits within this long of a start count as failing to start; this many in a row stop serve.
QUICK_EXIT_SECONDS = 10.0
QUICK_EXITS_FATAL = 5


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


class IngestProcess:
    """The owner's handle on the ingest process: `run` is a supervised task."""

    def __init__(self, public: socket.socket, owner_url: str, log_level: str) -> None:
        self.public = public
        self.owner_url = owner_url
        self.token = secrets.token_urlsafe(32)
        self._log_level = log_level
        self.pid: int | None = None
        self._quick_exits = 0
        self.fatal: str | None = None
        # Stops the owner's server (set by the CLI), which then exits with code 1.
        self.on_fatal: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "funnelstream.cli",
            "serve-ingest",
            "--fd",
            str(self.public.fileno()),
            "--owner",
            self.owner_url,
            "--parent",
            str(os.getpid()),
            "--log-level",
            self._log_level,
        ]

    async def run(self, stop: asyncio.Event) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.command(),
            pass_fds=(self.public.fileno(),),
            env={**os.environ, TOKEN_ENV: self.token},
            # Its own session: a terminal's Ctrl-C reaches the owner, which stops it first.
            start_new_session=True,
        )
        self.pid = proc.pid
        started = time.monotonic()
        log.info("ingest process started (pid %d)", proc.pid)
        exited = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if exited.done():
                self._count_exit(time.monotonic() - started)
                raise RuntimeError(
                    f"the ingest process (pid {proc.pid}) exited with {proc.returncode}"
                )
            self._quick_exits = 0
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), STOP_SECONDS)
                log.info("ingest process (pid %d) stopped", proc.pid)
            except TimeoutError:
                log.error("ingest process did not stop in %.0fs; killing it", STOP_SECONDS)
        finally:
            stopping.cancel()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    def _count_exit(self, ran_seconds: float) -> None:
        self._quick_exits = self._quick_exits + 1 if ran_seconds < QUICK_EXIT_SECONDS else 0
        if self._quick_exits >= QUICK_EXITS_FATAL:
            self.fatal = f"the ingest process failed {self._quick_exits} times right after starting"
            log.critical("%s: stopping serve", self.fatal)
            self.on_fatal()


def exit_with_parent(parent: int) -> None:
    """In the ingest process: stop (gracefully, SIGTERM) once the owner is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        log.warning("the owning serve process (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
