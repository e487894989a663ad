"""The processor's regex filter equals ClickHouse's `match()` on the real engine.

Patterns (a hand list of tricky ones, then generated ones) × texts go through the SQL the
report builds (`funnel.sql.filters.filter_sql`), one query per batch, and through the
processor's compiled filter; every boolean must agree. Every pattern validation accepts
is in some batch, so a pattern the engine refuses and validation accepts fails the query.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.match import compile_filter
from funnel.sql.filters import Params, filter_sql
from funnelstream.clickhouse import ClickHouse, ClickHouseQueryError
from schemas.filter_values import regex_problem
from schemas.funnels import PropertyFilter

pytestmark = pytest.mark.clickhouse

HAND_PATTERNS = [
    "",
    "a",
    "a.b",  # dot_nl: `.` takes a newline
    "^a",
    "b$",
    "^a$",
    "(?m)^b$",
    "(?s)a.b",
    "(?-s)a.b",
    "(?i)AB",
    "(?i:a)B",
    "[[:alpha:]]+",
    r"\pL",
    r"\p{Greek}",
    r"\PL",
    r"^\w+$",
    r"\bab\b",
    r"\B",
    r"\d",
    r"\s",
    r"\x{1F600}",
    "^.$",  # one character, however many bytes
    "^..$",
    "(a+)+$",
    "(a|aa)*c",
    "a{2,}",
    "a*?",
    r"\Qa.b\E",
    "é",
    "(?i)É",
    "x*",
    "[^a]",
    r"\A a",
    r"a\z",
    "\x00",
    "Windows ",
    "://",
    "a|b|c",
    "(?:ab|cd)e",
    "^(ab|a)(bc|c)?$",
    # A multi-byte character made optional: match()'s literal shortcut alone would take
    # part of it as required (see schemas/filter_values.py).
    "\U0001f600*",
    "abcé{0,1}",
    "abcé?",
    "(?P<n>abc)",
    "(?s:abc)",
    "[]abc]",
    r"\Qabc\E?",
]
REFUSED = [r"(a)\1", "(?=a)", "(?!a)", "(?<=a)b", r"\Z", "a{1001}", "(", "a**", "[a", "a\\"]
HAND_TEXTS = [
    "",
    "a",
    "ab",
    "a\nb",
    "b\na",
    "AB",
    "aB",
    "a.b",
    "axb",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!",
    "aaac",
    "αβγ",
    "é",
    "É",
    "\U0001f600",
    "\U0001f600\U0001f601",
    "ab cd",
    "x ab y",
    "123",
    "\t\n",
    "\x00",
    "a\x00b",
    "http://Windows x",
    "abc",
    "cde",
]


def engine(ch: ClickHouse, patterns: list[str], texts: list[str]) -> list[list[bool]]:
    """match() of every text (rows) against every pattern (columns), in one query, built
    by the report's own filter SQL over a properties map like the events table's."""
    params = Params()
    exprs = [
        filter_sql(PropertyFilter(property="k", op="regex", value=p), params) for p in patterns
    ]
    texts_param = params.bind(texts, "Array(String)")
    sql = (
        f"SELECT i, [{', '.join(exprs)}] FROM ("
        f"SELECT arrayJoin(arrayEnumerate({texts_param})) AS i,"
        f" map('k', {texts_param}[i]) AS properties) ORDER BY i"
    )
    return [[bool(v) for v in row[1]] for row in ch.query_rows_sync(sql, params.values)]


def processor(patterns: list[str], texts: list[str]) -> list[list[bool]]:
    compiled = [compile_filter(PropertyFilter(property="k", op="regex", value=p)) for p in patterns]
    return [[m({"k": t}) for m in compiled] for t in texts]


def assert_same(ch: ClickHouse, patterns: list[str], texts: list[str]) -> None:
    accepted = [p for p in dict.fromkeys(patterns) if regex_problem(p) is None]
    if not accepted or not texts:
        return
    got, want = processor(accepted, texts), engine(ch, accepted, texts)
    mismatches: list[Any] = [
        (p, t, g[j], w[j])
        for t, g, w in zip(texts, got, want, strict=True)
        for j, p in enumerate(accepted)
        if g[j] != w[j]
    ]
    assert mismatches == [], "(pattern, text, processor, ClickHouse)"


def test_hand_patterns_agree_with_the_engine(ch: ClickHouse) -> None:
    assert [p for p in HAND_PATTERNS if regex_problem(p) is not None] == []
    assert_same(ch, HAND_PATTERNS, HAND_TEXTS)


@pytest.mark.parametrize("pattern", REFUSED)
def test_refused_patterns_are_refused_by_the_engine_too(ch: ClickHouse, pattern: str) -> None:
    assert regex_problem(pattern) is not None
    with pytest.raises(ClickHouseQueryError, match="(?i)re2|regexp|regular"):
        engine(ch, [pattern], ["a"])


ATOMS = st.sampled_from(
    ["a", "b", "A", "é", "\U0001f600", " ", "\n", ".", r"\w", r"\W", r"\d", r"\s", r"\b",
     r"\B", "[ab]", "[^a]", "[a-z]", r"\pL", r"\p{Lu}", "^", "$", "(?i)", "(?m)", "(?s)",
     "(?U)", r"\A", r"\z"]
)  # fmt: skip
QUANTIFIERS = st.sampled_from(["", "", "*", "+", "?", "{1,2}", "*?", "+?", "{2}"])


def _patterns() -> st.SearchStrategy[str]:
    pieces = st.recursive(
        st.tuples(ATOMS, QUANTIFIERS).map("".join),
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map("".join),
            st.lists(inner, min_size=2, max_size=3).map("|".join),
            st.tuples(st.sampled_from(["(", "(?:", "(?i:"]), inner, QUANTIFIERS).map(
                lambda t: f"{t[0]}{t[1]}){t[2]}"
            ),
        ),
        max_leaves=6,
    )
    # Raw strings over regex syntax too: mostly refused, and where accepted they exercise
    # the engine's literal shortcuts (a pattern with no metacharacter is a substring).
    raw = st.text(alphabet="ab.*+?()[]{}|^$\\-, 1", max_size=6)
    return st.one_of(pieces, pieces, raw)


TEXTS = st.text(alphabet="aAbBé\U0001f600 \n1_-.", max_size=8)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    patterns=st.lists(_patterns(), min_size=1, max_size=30),
    texts=st.lists(TEXTS, min_size=1, max_size=25),
)
def test_generated_patterns_agree_with_the_engine(
    ch: ClickHouse, patterns: list[str], texts: list[str]
) -> None:
    assert_same(ch, patterns, texts + HAND_TEXTS[:8])
