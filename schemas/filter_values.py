"""What a filter's value means, stated once for the live matcher (funnel/match.py)
and the SQL (funnel/sql/filters.py), so the two cannot drift apart.

Numbers (`gt`, `lt`). Both sides compare as Float64: ClickHouse parses the stored
property with `toFloat64OrNull` and compares it with the bound bound as a Float64
parameter; the processor does the same with Python floats. A saved bound must be a JSON
number (not a boolean) between -2**53 and 2**53 inclusive: every integer in that range is
exact as a Float64, and a fraction is the Float64 that JSON parsing already made of it.
NaN, the infinities and anything larger are refused when a funnel is saved (they would
not survive storage as JSON, or would overflow the conversion to float). Numeric strings
("10") are refused, as they always were.

Regular expressions (`regex`). ClickHouse's `match(haystack, pattern)` runs RE2 with
`dot_nl` on (`.` matches a newline), errors not logged and everything else at RE2's
defaults: UTF-8, case-sensitive, Perl syntax, leftmost-first, and an unanchored search
(OptimizedRegularExpression in ClickHouse's source). Before RE2, match() looks for a
literal it believes every match contains and answers "no" without RE2 when the text lacks
it; for a multi-byte character followed by `?`, `*` or `{0,...}` it keeps part of that
character as required and misses matches (`😀*` against "x"). A top-level alternative
turns that shortcut off, so both sides run `engine_pattern(p)`: the pattern as a group,
or an alternative that never matches. The processor compiles that same text with the
same options through the google-re2 binding: both accept the same patterns and match the
same strings, in time linear in the text (no backtracking).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import re2

from schemas.properties import flatten_value

# Every integer of magnitude up to 2**53 is exactly one Float64.
NUMBER_LIMIT = 2**53


class CompiledRegex(Protocol):
    def search(self, text: bytes) -> object | None: ...


def _match_options() -> Any:
    options = re2.Options()
    options.dot_nl = True
    # Never let the library write to stderr for a pattern a client sent.
    options.log_errors = False
    return options


MATCH_OPTIONS = _match_options()


def number_problem(value: Any) -> str | None:
    """Why `value` is not a number a gt/lt filter may compare with, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "needs a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "needs a finite number (not NaN or Infinity)"
    if not -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
        return f"needs a number between -2**53 and 2**53 ({NUMBER_LIMIT})"
    return None


def number_bound(value: Any) -> float | None:
    """The Float64 a gt/lt filter compares with; None if there is none (the filter then
    matches nothing). Never raises: validation refuses these values before they are
    saved, and a definition that slipped past it must not stop the processor."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        bound = float(value)
    except OverflowError:  # an int beyond the Float64 range
        return None
    return bound if math.isfinite(bound) else None


def property_number(text: str | None) -> float | None:
    """A stored property as ClickHouse's toFloat64OrNull reads it (None: not a number).

    Python's float() also takes ' 12', '1_000' and non-ASCII digits; toFloat64OrNull does
    not, and the SQL report must agree with the live state."""
    if text is None or not text.isascii() or "_" in text or text != text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return None


def list_values(value: Any) -> list[str]:
    """The members of an in/not_in list as the stored properties spell them."""
    if not isinstance(value, list | tuple):
        return []
    return [flatten_value(v) for v in value]


def engine_pattern(pattern: str) -> str:
    """What both sides run for a saved pattern: the same matches, never the shortcut.

    `\\z.` is a character after the end of the text: it never matches."""
    return f"(?:{pattern})|\\z."


def compile_regex(pattern: str) -> CompiledRegex:
    """`engine_pattern(pattern)` compiled as ClickHouse's match() compiles it; raises
    re2.error if RE2 refuses it. Compiled over UTF-8 bytes: see `regex_text`."""
    text = engine_pattern(pattern).encode("utf-8")
    compiled: CompiledRegex = re2.compile(text, MATCH_OPTIONS)
    return compiled


def regex_text(text: str) -> bytes:
    # A str from JSON can hold a lone surrogate, which strict UTF-8 refuses to encode; it
    # must not raise in the processor, and RE2 treats the bytes as invalid UTF-8.
    return text.encode("utf-8", "surrogatepass")


def regex_problem(pattern: str) -> str | None:
    """Why RE2 (with match()'s options) refuses the pattern, or None."""
    try:
        pattern.encode("utf-8")
    except UnicodeEncodeError:
        return "the pattern is not valid Unicode text"
    try:
        # The pattern alone, as written, and as a group (an unclosed \\Q would swallow
        # the group's end).
        re2.compile(pattern.encode("utf-8"), MATCH_OPTIONS)
        compile_regex(pattern)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"RE2 refuses the pattern: {detail}"
    return None
