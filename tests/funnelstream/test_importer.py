"""The importer without a server: timestamp parsing, the streaming reader, event ids, and
the retry policy (against an in-process HTTP transport standing in for ingest's
responses; the real ingest is exercised in tests/e2e/test_import.py)."""

from __future__ import annotations

import calendar
import gzip
import inspect
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from funnelstream.importer import (
    EXIT_ABORTED,
    EXIT_BAD_LINES,
    EXIT_OK,
    SECONDS_BELOW,
    Importer,
    Options,
    UnreadableFile,
    derive_event_id,
    parse_timestamp,
    read_records,
    retry_after_seconds,
)

# 2000-01-01 .. 2100-01-01: the range ingest accepts, and well inside both epoch units.
MS_2000 = 946_684_800_000
MS_2100 = 4_102_444_800_000


def oracle_ms(dt: datetime) -> int:
    """Epoch ms of an aware datetime, by a different route than the importer's."""
    delta = dt.astimezone(UTC).replace(tzinfo=None) - datetime(1970, 1, 1)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
datetimes = st.datetimes(
    min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30), timezones=offsets
)


@given(datetimes, st.sampled_from(["T", " "]), st.sampled_from(["auto", "milliseconds"]))
def test_iso_with_any_offset_round_trips_to_the_same_instant(
    dt: datetime, sep: str, timespec: str
) -> None:
    text = dt.isoformat(sep=sep, timespec=timespec)
    expected = oracle_ms(dt)
    if timespec == "milliseconds":
        assert expected == oracle_ms(dt.replace(microsecond=dt.microsecond // 1000 * 1000))
    assert parse_timestamp(text) == expected


@given(datetimes)
def test_z_and_the_utc_offset_mean_the_same(dt: datetime) -> None:
    utc = dt.astimezone(UTC)
    plain = utc.replace(tzinfo=None).isoformat()
    assert parse_timestamp(plain + "Z") == oracle_ms(dt)
    assert parse_timestamp(plain + "+00:00") == oracle_ms(dt)
    # No zone at all is read as UTC, as ingest and ClickHouse read it.
    assert parse_timestamp(plain) == oracle_ms(dt)


@given(st.integers(min_value=MS_2000, max_value=MS_2100))
def test_epoch_seconds_and_milliseconds_are_told_apart_by_magnitude(ms: int) -> None:
    assert parse_timestamp(ms) == ms
    assert parse_timestamp(str(ms)) == ms
    seconds, millis = divmod(ms, 1000)
    assert parse_timestamp(seconds) == seconds * 1000
    assert parse_timestamp(str(seconds)) == seconds * 1000
    assert parse_timestamp(f"{seconds}.{millis:03d}") == ms
    # A JSON number with a fraction (a float) keeps its milliseconds exactly.
    assert parse_timestamp(float(f"{seconds}.{millis:03d}")) == ms


def test_the_unit_boundary_and_odd_forms() -> None:
    assert parse_timestamp(SECONDS_BELOW - 1) == (SECONDS_BELOW - 1) * 1000
    assert parse_timestamp(SECONDS_BELOW) == SECONDS_BELOW
    assert (
        parse_timestamp("2026-01-02T03:04:05+02:00")
        == calendar.timegm((2026, 1, 2, 1, 4, 5, 0, 0, 0)) * 1000
    )
    assert parse_timestamp("2026-01-02") == calendar.timegm((2026, 1, 2, 0, 0, 0, 0, 0, 0)) * 1000
    assert parse_timestamp("2026-01-02T03:04:05.123456789Z") == parse_timestamp(
        "2026-01-02T03:04:05.123Z"
    )
    assert parse_timestamp(" 1767323045 ") == 1_767_323_045_000
    for bad in ("yesterday", "", "1e12", "٢٠٢٦", "2026-13-01", None, True, float("nan"), [1]):
        assert parse_timestamp(bad) is None, bad


def test_derived_ids_are_stable_per_line_and_differ_for_identical_lines() -> None:
    event = {"event": "page_view", "visitor_id": "v1", "timestamp": 1_767_323_045_000}
    first = derive_event_id(2, event)
    assert first == derive_event_id(2, dict(reversed(list(event.items()))))
    assert uuid.UUID(first).version == 5
    assert derive_event_id(3, event) != first
    assert derive_event_id(2, {**event, "visitor_id": "v2"}) != first


CSV_TEXT = (
    "event,visitor_id,timestamp,event_id,properties.url,properties\n"
    "page_view,v1,2026-01-02T03:04:05+02:00,,/,\n"
    'product_view,v1,1767323100,,"/p/1\nsecond line",\n'
    "add_to_cart,v1,yesterday,,/cart,\n"
    "\n"
    'purchase,v1,1767323200000,7d5e1b0a-0000-4000-8000-000000000001,/t,"{""revenue"": 42}"\n'
    "page_view,v2,2026-01-02,,/\n"
    'page_view,v3,2026-01-02,,/,"[1]"\n'
    "page_view,v1,2026-01-02T03:04:05+02:00,,/,\n"
)


def test_csv_records_carry_their_starting_line_and_bad_lines_their_reason(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.csv"
    path.write_text(CSV_TEXT)
    records = list(read_records(path, "csv"))
    assert [(r.line, r.error is None) for r in records] == [
        (2, True),
        (3, True),  # a quoted field across lines 3-4
        (5, False),
        (7, True),  # after a blank line
        (8, False),
        (9, False),
        (10, True),
    ]
    first, second, _, purchase, _, _, again = records
    assert first.event is not None and first.event["timestamp"] == 1_767_315_845_000
    assert first.event["properties"] == {"url": "/"}
    assert second.event is not None and second.event["timestamp"] == 1_767_323_100_000
    assert second.event["properties"] == {"url": "/p/1\nsecond line"}
    assert purchase.event is not None
    assert purchase.event["event_id"] == "7d5e1b0a-0000-4000-8000-000000000001"
    assert purchase.event["properties"] == {"url": "/t", "revenue": 42}
    assert "yesterday" in (records[2].error or "")
    assert records[4].error == "has 5 fields, the header has 6"
    assert records[5].error == "properties is not a JSON object"
    # Line 10 repeats line 2 word for word: two events, two ids.
    assert again.event is not None and again.event["event_id"] != first.event["event_id"]
    # A second read (a rerun) gives every line the same id.
    assert [r.event["event_id"] for r in read_records(path, "csv") if r.event] == [
        r.event["event_id"] for r in records if r.event
    ]


def test_ndjson_and_gzip(tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"event": "page_view", "visitor_id": "a", "timestamp": 1_767_323_045.5}),
        b"",
        b"{not json",
        b"[1, 2]",
        orjson.dumps({"event": "page_view", "visitor_id": "a"}),
        orjson.dumps({"event": "page_view", "visitor_id": "a", "timestamp": "2026-01-02Z"}),
    ]
    path = tmp_path / "h.ndjson.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    records = list(read_records(path, "ndjson"))
    assert [r.line for r in records] == [1, 3, 4, 5, 6]
    assert records[0].event is not None and records[0].event["timestamp"] == 1_767_323_045_500
    assert (records[1].error or "").startswith("not valid JSON")
    assert records[2].error == "not a JSON object"
    assert records[3].error == "timestamp is missing"
    assert records[4].error is not None  # date plus Z without a time is not ISO 8601
    # The same content uncompressed gives the same ids: a gzipped copy reruns safely.
    plain = tmp_path / "h.ndjson"
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    assert [r.event for r in read_records(plain, "ndjson")] == [r.event for r in records]


def test_a_csv_without_the_needed_columns_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("name,visitor\npage_view,v1\n")
    with pytest.raises(UnreadableFile, match="event, timestamp, visitor_id"):
        list(read_records(path, "csv"))


def _large_csv(path: Path, rows: int) -> None:
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write("event,visitor_id,timestamp,properties.url\n")
        for i in range(rows):
            fh.write(f"page_view,visitor-{i},{1_767_323_045_000 + i},/page/{i % 97}\n")


def test_the_reader_streams_in_constant_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv.gz"
    rows = 40_000
    _large_csv(path, rows)
    records = read_records(path, "csv")
    assert inspect.isgenerator(read_records(path, "csv"))
    tracemalloc.start()
    try:
        count = 0
        for record in records:
            assert record.event is not None
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    # 40k events held as dicts would be tens of MB; one record at a time is a few
    # hundred KB (the gzip window and read buffers).
    assert peak < 2 * 1024 * 1024, peak


class Ingest:
    """Plays ingest's answers for the retry tests: the first `fail` answers are `status`
    (with Retry-After), then 202 or a 207 refusing the events whose visitor is "bad"."""

    def __init__(self, status: int = 503, fail: int = 0, retry_after: str | None = "0") -> None:
        self.status = status
        self.fail = fail
        self.retry_after = retry_after
        self.batches: list[list[dict[str, object]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.fail > 0:
            self.fail -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return httpx.Response(self.status, json={"error": "overloaded"}, headers=headers)
        if request.headers["Authorization"] != "Bearer wk":
            return httpx.Response(401, json={"error": "invalid_write_key"})
        batch = orjson.loads(request.content)["batch"]
        self.batches.append(batch)
        errors = [
            {"index": i, "field": "visitor_id", "message": "is bad"}
            for i, e in enumerate(batch)
            if e["visitor_id"] == "bad"
        ]
        accepted = len(batch) - len(errors)
        if errors:
            return httpx.Response(207, json={"accepted": accepted, "errors": errors})
        return httpx.Response(202, json={"accepted": accepted})


def _history(path: Path, visitors: list[str]) -> Path:
    rows = "".join(f"page_view,{v},{1_767_323_045 + i}\n" for i, v in enumerate(visitors))
    path.write_text("event,visitor_id,timestamp\n" + rows)
    return path


def _importer(path: Path, ingest: Ingest, **options: object) -> Importer:
    settings: dict[str, object] = {"concurrency": 2, "batch_size": 3, "quiet": True, **options}
    return Importer(
        Options(path=path, host="http://ingest", write_key="wk", **settings),  # type: ignore[arg-type]
        transport=httpx.MockTransport(ingest),
    )


@pytest.fixture
def history(tmp_path: Path) -> Iterator[Path]:
    yield _history(tmp_path / "h.csv", ["a", "b", "bad", "c", "d", "e", "f", "bad"])


def test_overload_is_retried_and_refused_events_map_to_lines(
    history: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest = Ingest(status=503, fail=3)
    importer = _importer(history, ingest)
    assert importer.run() == EXIT_BAD_LINES
    assert importer.counts.retries == 3
    assert importer.counts.accepted == 6
    sent = sorted(str(e["visitor_id"]) for batch in ingest.batches for e in batch)
    assert sent == sorted(["a", "b", "bad", "c", "d", "e", "f", "bad"])
    err = capsys.readouterr().err
    assert "line 4: visitor_id is bad (refused by ingest)" in err
    assert "line 9: visitor_id is bad (refused by ingest)" in err


def test_retry_after_is_honoured_and_a_dead_server_stops_the_import(
    history: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds(None) is None
    ingest = Ingest(status=429, fail=10**6, retry_after="0.3")
    importer = _importer(history, ingest, concurrency=1, give_up_after=0.5)
    assert importer.run() == EXIT_ABORTED
    # Waits of at least 0.3 s within 0.5 s: two or three attempts, not a tight loop.
    assert 1 <= importer.counts.retries <= 2
    assert "stopped: lines 2-4: still failing" in capsys.readouterr().err


def test_a_refused_key_stops_at_once(history: Path) -> None:
    importer = _importer(history, Ingest(), concurrency=1)
    importer.options = Options(
        path=history, host="http://ingest", write_key="nope", quiet=True, batch_size=3
    )
    assert importer.run() == EXIT_ABORTED
    assert importer.counts.retries == 0


def test_a_clean_file_exits_zero(tmp_path: Path) -> None:
    path = _history(tmp_path / "ok.csv", ["a", "b", "c"])
    assert _importer(path, Ingest()).run() == EXIT_OK
