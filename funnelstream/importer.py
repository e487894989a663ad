"""`funnelstream import`: a history file sent through ingest, exactly like live traffic.

The steps, in the order a line moves:

    read      stream the file (CSV or NDJSON, optionally gzip), one record at a time,
              each with the line number it starts on; nothing is loaded whole or sorted
              (the processor places events that arrive in any order)
    convert   timestamp → epoch milliseconds (`parse_timestamp`); event_id → the line's
              own, else one derived from the line (`derive_event_id`), so a rerun dedupes
    batch     up to --batch-size events (and at most `MAX_BATCH_BYTES` of JSON)
    send      --concurrency connections; 429/502/503/504 and connection errors are
              retried with backoff (never sooner than Retry-After) until --give-up-after
    report    bad lines by line number: those the importer cannot read, and those ingest
              refused (its 207/400 `errors` index → the line the event came from)

Only what the importer itself interprets (the file's shape, the timestamp) is checked
here; every other rule (required fields, lengths, UUIDs) is ingest's, reported back per
event and mapped to the line, so the two can never disagree.

Exit codes (see `EXIT_*`): 0 every line stored; 1 done, but some lines were bad (listed
on stderr); 2 the file cannot be read as the format (missing column, not UTF-8) or a
usage error; 3 stopped: a batch could not be delivered (ingest refused the key or kept
failing). After 3, rerunning the same file is safe: what was stored is deduplicated by
event_id.
"""

from __future__ import annotations

import asyncio
import csv
import email.utils
import gzip
import re
import sys
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from schemas.events import iso_to_epoch_ms

EXIT_OK = 0
EXIT_BAD_LINES = 1
EXIT_UNREADABLE = 2
EXIT_ABORTED = 3

# Ingest refuses a batch of more than 1000 events (`max_batch_events`).
MAX_BATCH_SIZE = 1000
# Ingest's default body limit is 1 MiB; staying well under it means a batch of events
# with large properties is split before sending rather than refused (413). A batch
# refused anyway (a server with a lower limit) is split in halves and sent again.
MAX_BATCH_BYTES = 512 * 1024

# Epoch numbers below this are seconds, the rest milliseconds. 1e11 seconds is the year
# 5138 and 1e11 milliseconds is 1973-03-03, so every date between those two is read as
# meant whichever unit the file uses (ingest refuses dates before 2000 anyway).
SECONDS_BELOW = 100_000_000_000

# Fixed forever: changing it changes every derived event_id, and a rerun of a file
# imported before the change would count its events twice.
EVENT_ID_NAMESPACE = uuid.UUID("5b0f6c52-3a8e-4c6e-9a51-6f1d2b7c9e04")

# Retrying these is safe because every event carries an event_id: a batch that was
# stored after all is deduplicated by the processor. 502/504 come from proxies in front
# of ingest and mean the same as 503.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

_EPOCH_NUMBER = re.compile(r"-?\d+(?:\.\d+)?", re.ASCII)


def parse_timestamp(value: object) -> int | None:
    """A timestamp as files hold it → epoch milliseconds; None when unreadable.

    * ISO 8601 (the standard library's reading, the same as ingest's): offsets
      (`+02:00`, `+0200`, `Z`), fractional seconds (below a millisecond truncated),
      date only (midnight), no zone (read as UTC, as ingest and ClickHouse do).
    * Epoch numbers, as JSON numbers or digit strings, possibly fractional: seconds when
      below `SECONDS_BELOW`, else milliseconds.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _epoch_ms(Decimal(value))
    if isinstance(value, float):
        # str() is the shortest text that round-trips, so 1.7e9 + .123 s stays .123 s
        # rather than becoming ...122.99999 ms through binary multiplication.
        return _epoch_ms(Decimal(str(value)))
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _EPOCH_NUMBER.fullmatch(text):
        return _epoch_ms(Decimal(text))
    return iso_to_epoch_ms(text)


def _epoch_ms(number: Decimal) -> int | None:
    try:
        if not number.is_finite():
            return None
        ms = number * 1000 if abs(number) < SECONDS_BELOW else number
        return int(ms.to_integral_value(rounding=ROUND_FLOOR))
    except InvalidOperation:
        return None


def derive_event_id(line: int, event: dict[str, Any]) -> str:
    """The event_id of a line that has none: uuid5 over the line number and the content.

    The content alone would give two identical lines (a double click logged twice in
    the same millisecond) one id, and the second would be deduplicated away. What makes
    them two events is where they are in the file, and the line number is the only such
    fact that needs no memory (a count of earlier identical lines would need a set of
    every line seen). So: rerunning the same file, or a renamed or gzipped copy of it,
    gives every line the same id and stores nothing twice; a line fixed in place gets a
    new id (right: it was never stored). Inserting or deleting lines shifts the numbers
    of those below, which then count again: to edit a file between runs, give it an
    event_id column. The content is the event as sent (timestamp already in epoch ms,
    keys sorted), so `...T03:00:00+02:00` and `...T01:00:00Z` are the same content.
    """
    content = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{line}\n{content.decode()}"))


class UnreadableFile(Exception):
    """The file as a whole cannot be read as its format: stop before sending anything more."""


@dataclass(frozen=True, slots=True)
class Record:
    """One event of the file: ready to send, or the reason it is a bad line."""

    line: int
    event: dict[str, Any] | None = None
    error: str | None = None


def detect_format(path: Path) -> str:
    return "csv" if ".csv" in path.suffixes else "ndjson"


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_records(path: Path, fmt: str) -> Iterator[Record]:
    """The file's events one at a time, in file order; memory does not grow with the file."""
    try:
        with _open_text(path) as fh:
            rows = _csv_rows(fh) if fmt == "csv" else _ndjson_rows(fh)
            for line, raw in rows:
                yield Record(line, error=raw) if isinstance(raw, str) else to_record(line, raw)
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"{path}: not UTF-8 text ({exc})") from exc
    except (OSError, EOFError, zlib.error) as exc:  # EOFError, zlib.error: a damaged .gz
        raise UnreadableFile(f"{path}: {exc}") from exc


def to_record(line: int, raw: dict[str, Any]) -> Record:
    """Pure: a parsed line → the event to send (epoch-ms timestamp, an event_id)."""
    value = raw.get("timestamp")
    if value is None or value == "":
        # Ingest would stamp the time of the import, which is never right for history.
        return Record(line, error="timestamp is missing")
    timestamp_ms = parse_timestamp(value)
    if timestamp_ms is None:
        return Record(
            line, error=f"timestamp {value!r} is not ISO 8601 or epoch seconds/milliseconds"
        )
    event = {key: v for key, v in raw.items() if key != "event_id"}
    event["timestamp"] = timestamp_ms
    event_id = raw.get("event_id")
    event["event_id"] = event_id if event_id not in (None, "") else derive_event_id(line, event)
    return Record(line, event=event)


def _ndjson_rows(fh: IO[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, text in enumerate(fh, start=1):
        if not text.strip():
            continue
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield number, f"not valid JSON: {exc}"
            continue
        yield number, doc if isinstance(doc, dict) else "not a JSON object"


def _csv_rows(fh: IO[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        return
    missing = {"event", "visitor_id", "timestamp"} - set(header)
    if missing:
        raise UnreadableFile(f"CSV header lacks column(s) {', '.join(sorted(missing))}")
    while True:
        # A quoted field may span lines: a record starts on the line after the last one.
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, f"not valid CSV: {exc}"
            continue
        if not row:
            continue  # a blank line
        if len(row) != len(header):
            yield start, f"has {len(row)} fields, the header has {len(header)}"
            continue
        yield start, _csv_event(header, row)


def _csv_event(header: list[str], row: list[str]) -> dict[str, Any] | str:
    event: dict[str, Any] = {}
    props: dict[str, Any] = {}
    for key, value in zip(header, row, strict=True):
        if value == "":
            continue  # an empty cell is an absent field, not an empty string
        if key == "properties":
            try:
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError:
                return "properties is not a JSON object"
            if not isinstance(parsed, dict):
                return "properties is not a JSON object"
            props.update(parsed)
        elif key.startswith("properties."):
            props[key.removeprefix("properties.")] = value
        else:
            event[key] = value
    if props:
        event["properties"] = props
    return event


@dataclass(slots=True)
class Batch:
    lines: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0

    def span(self) -> str:
        return f"lines {self.lines[0]}-{self.lines[-1]}"


@dataclass(frozen=True, slots=True)
class Options:
    path: Path
    host: str
    write_key: str
    fmt: str | None = None
    concurrency: int = 4
    batch_size: int = 500
    give_up_after: float = 600.0
    quiet: bool = False
    progress_every: float = 2.0


@dataclass(slots=True)
class Counts:
    read: int = 0
    accepted: int = 0
    dropped: int = 0
    bad: int = 0
    retries: int = 0


class Aborted(Exception):
    """A batch could not be delivered; nothing more is read."""


class Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(header: str | None) -> float | None:
    """Retry-After as delta seconds or an HTTP date; None when absent or unreadable."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Importer:
    """Reads, batches and sends one file; `run` returns an exit code."""

    def __init__(self, options: Options, transport: httpx.AsyncBaseTransport | None = None):
        if not 1 <= options.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch size must be 1..{MAX_BATCH_SIZE}")
        if options.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.options = options
        self.counts = Counts()
        self._transport = transport
        self._backoff = wait_exponential_jitter(multiplier=0.5, max=30)
        self._started = time.monotonic()

    def run(self) -> int:
        return asyncio.run(self.run_async())

    async def run_async(self) -> int:
        o = self.options
        self._started = time.monotonic()
        records = read_records(o.path, o.fmt or detect_format(o.path))
        try:
            await self._send_all(records)
        except UnreadableFile as exc:
            self._summary(f"cannot read {exc}")
            return EXIT_UNREADABLE
        except Aborted as exc:
            self._summary(
                f"stopped: {exc}. Nothing after that was read; rerunning the same file is "
                "safe (stored events are deduplicated by event_id)"
            )
            return EXIT_ABORTED
        self._summary(None)
        return EXIT_BAD_LINES if self.counts.bad else EXIT_OK

    async def _send_all(self, records: Iterable[Record]) -> None:
        o = self.options
        # Bounded, so reading never runs ahead of sending by more than a few batches.
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2 * o.concurrency)
        limits = httpx.Limits(
            max_connections=o.concurrency, max_keepalive_connections=o.concurrency
        )
        async with httpx.AsyncClient(
            base_url=o.host,
            timeout=60,
            limits=limits,
            headers={"Authorization": f"Bearer {o.write_key}"},
            transport=self._transport,
        ) as client:
            try:
                async with asyncio.TaskGroup() as tasks:
                    for _ in range(o.concurrency):
                        tasks.create_task(self._worker(client, queue))
                    progress = tasks.create_task(self._progress())
                    await self._produce(records, queue)
                    for _ in range(o.concurrency):
                        await queue.put(None)
                    await queue.join()
                    progress.cancel()
            except BaseExceptionGroup as group:
                # The first failure is the one to report; the other tasks were cancelled
                # because of it.
                first = _first_failure(group)
                if first is None:
                    raise
                raise first from None

    async def _produce(self, records: Iterable[Record], queue: asyncio.Queue[Batch | None]) -> None:
        batch = Batch()
        for record in records:
            self.counts.read += 1
            if record.event is None:
                self._bad(record.line, record.error or "unreadable")
                continue
            size = len(orjson.dumps(record.event)) + 1
            if batch.events and (
                len(batch.events) >= self.options.batch_size or batch.size + size > MAX_BATCH_BYTES
            ):
                await queue.put(batch)
                batch = Batch()
            batch.lines.append(record.line)
            batch.events.append(record.event)
            batch.size += size
        if batch.events:
            await queue.put(batch)

    async def _worker(self, client: httpx.AsyncClient, queue: asyncio.Queue[Batch | None]) -> None:
        while True:
            batch = await queue.get()
            try:
                if batch is None:
                    return
                await self._send(client, batch)
            finally:
                queue.task_done()

    async def _send(self, client: httpx.AsyncClient, batch: Batch) -> None:
        response = await self._post(client, batch)
        status = response.status_code
        if status == 413 and len(batch.events) > 1:
            half = len(batch.events) // 2
            for lines, events in (
                (batch.lines[:half], batch.events[:half]),
                (batch.lines[half:], batch.events[half:]),
            ):
                await self._send(client, Batch(lines, events))
            return
        if status == 413:
            self._bad(batch.lines[0], "event is larger than ingest accepts")
            return
        body = _json(response)
        if status in (202, 207) or (status == 400 and isinstance(body.get("errors"), list)):
            # 400 with `errors`: no event of the batch was valid, each one is listed.
            self.counts.accepted += int(body.get("accepted", 0))
            self.counts.dropped += int(body.get("dropped", 0))
            self._ingest_errors(batch, body.get("errors") or [])
            return
        raise Aborted(f"{batch.span()}: ingest answered {status} {response.text[:300]}")

    async def _post(self, client: httpx.AsyncClient, batch: Batch) -> httpx.Response:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((Retryable, httpx.TransportError)),
            wait=self._wait,
            stop=stop_after_delay(self.options.give_up_after),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await client.post("/v1/events", json={"batch": batch.events})
                    if response.status_code in RETRY_STATUSES:
                        raise Retryable(
                            f"{response.status_code} {response.text[:200]}",
                            retry_after_seconds(response.headers.get("Retry-After")),
                        )
                    return response
        except (Retryable, httpx.TransportError) as exc:
            raise Aborted(
                f"{batch.span()}: still failing after {self.options.give_up_after:g} s: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, but never sooner than the server asked."""
        backoff = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, Retryable) and exc.retry_after is not None:
            return max(exc.retry_after, backoff)
        return backoff

    def _count_retry(self, state: RetryCallState) -> None:
        self.counts.retries += 1

    def _ingest_errors(self, batch: Batch, errors: list[dict[str, Any]]) -> None:
        by_index: dict[int, list[str]] = {}
        for error in errors:
            message = f"{error.get('field') or 'event'} {error.get('message', '')}".strip()
            by_index.setdefault(int(error["index"]), []).append(message)
        for index, messages in sorted(by_index.items()):
            self._bad(batch.lines[index], "; ".join(messages) + " (refused by ingest)")

    def _bad(self, line: int, reason: str) -> None:
        self.counts.bad += 1
        print(f"import: line {line}: {reason}", file=sys.stderr, flush=True)

    async def _progress(self) -> None:
        if self.options.quiet:
            return
        while True:
            await asyncio.sleep(self.options.progress_every)
            print(f"import: {self._status()}", file=sys.stderr, flush=True)

    def _status(self) -> str:
        c = self.counts
        elapsed = max(time.monotonic() - self._started, 1e-9)
        return (
            f"{c.read} lines read, {c.accepted} events accepted "
            f"({c.accepted / elapsed:.0f}/s), {c.bad} bad lines, {c.retries} retries"
        )

    def _summary(self, failure: str | None) -> None:
        c = self.counts
        elapsed = time.monotonic() - self._started
        extra = f", {c.dropped} dropped as bots" if c.dropped else ""
        print(
            f"imported {c.accepted} events from {self.options.path} in {elapsed:.1f} s: "
            f"{c.read} lines read, {c.bad} bad lines{extra}, {c.retries} retries",
            flush=True,
        )
        if failure is not None:
            print(f"import: {failure}", file=sys.stderr, flush=True)
        elif c.bad:
            print(f"import: {c.bad} bad lines (listed above)", file=sys.stderr, flush=True)


def _first_failure(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    for exc in group.exceptions:
        if isinstance(exc, Aborted | UnreadableFile):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            nested = _first_failure(exc)
            if nested is not None:
                return nested
    return None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
