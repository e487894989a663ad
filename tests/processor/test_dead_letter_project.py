"""A dead letter keeps the project of its log key, so /v1/stats counts it for that
project only (the payload itself may be unreadable)."""

from __future__ import annotations

from funnelstream.log import LogMessage
from processor.decode import dead_letter_row, project_of_key
from processor.rows import DEAD_LETTER_COLUMNS
from schemas.events import Event, InvalidMessage


def test_the_project_is_read_from_the_key_written_by_ingest() -> None:
    event = Event("shop", "id", "x", "v\x1fw", 0, 0)
    assert project_of_key(event.partition_key()) == "shop"
    assert project_of_key(b"") == ""
    assert project_of_key(b"\xff\xfe\x1fv") == "\ufffd\ufffd"


def test_a_dead_letter_row_names_its_project() -> None:
    message = LogMessage(3, 7, b"shop\x1fv1", b"\x00not json", 0)
    row = dead_letter_row(message, InvalidMessage("undecodable", "x"), 0)
    assert dict(zip(DEAD_LETTER_COLUMNS, row, strict=True))["project_id"] == "shop"
