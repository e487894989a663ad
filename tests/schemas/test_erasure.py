"""The erasure record: read back as written, never mistaken for an event (or the reverse),
and split out of a poll in log order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from funnelstream.log import LogMessage
from processor.erase import segments
from schemas.erasure import (
    Erasure,
    InvalidErasure,
    decode_erasure,
    encode_erasure,
    is_erasure,
)
from schemas.events import Event, encode

ids = st.text(min_size=1, max_size=50)


@given(ids, ids, st.uuids().map(str), st.integers(0, 2**53), st.text(max_size=20))
def test_an_erasure_reads_back_as_written(
    project: str, visitor: str, erasure_id: str, at: int, user: str
) -> None:
    erasure = Erasure(project, visitor, erasure_id, at, user)
    payload = encode_erasure(erasure)
    assert is_erasure(payload)
    assert decode_erasure(payload) == erasure
    # The visitor's events' partition key: the record lands behind them.
    event = Event(project, "00000000-0000-4000-8000-000000000000", "e", visitor, at, at)
    assert erasure.partition_key() == event.partition_key()
    assert not is_erasure(encode(event))


@pytest.mark.parametrize(
    "payload", [b'{"erase":2,"p":"p","vid":"v","id":"i","at":1}', b'{"erase":1}', b'{"erase":']
)
def test_an_unreadable_erasure_is_refused(payload: bytes) -> None:
    with pytest.raises(InvalidErasure):
        decode_erasure(payload)


def _message(offset: int, value: bytes) -> LogMessage:
    return LogMessage(0, offset, b"k", value, 0)


def test_a_poll_splits_at_its_erasures_in_log_order() -> None:
    wipe = encode_erasure(Erasure("p", "v", "id", 0))
    bad = b'{"erase":9}'
    messages = [
        _message(0, b"a"),
        _message(1, wipe),
        _message(2, wipe),
        _message(3, b"b"),
        _message(4, bad),
    ]
    out = [
        ([m.offset for m in s.messages], s.erasure and s.erasure[0].offset)
        for s in segments(messages)
    ]
    # An unreadable erasure goes on as a message: the decoder dead-letters it.
    assert out == [([0], 1), ([], 2), ([3, 4], None)]
