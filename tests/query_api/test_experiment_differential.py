"""The experiment comparison's counts from ClickHouse equal the plain-Python oracle
(tests/oracle/experiment_reference.py) exactly, on the random funnels and event streams of
the report's differential test: per variant, entities reaching each step; entities seen
with several values; entities without one."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.compiled import compile_funnel
from funnelstream.clickhouse import ClickHouse
from processor.rows import ms_to_datetime
from query_api.experiment import counts_from_rows
from query_api.sql.experiment import experiment_sql
from schemas.funnels import FunnelDefinition, PropertyFilter
from tests.oracle import experiment_reference, funnel_reference
from tests.query_api.test_report_differential import (
    END,
    START,
    filters,
    funnels,
    insert,
    streams,
)

pytestmark = pytest.mark.clickhouse

_projects = itertools.count()


@settings(
    # EXPERIMENT_DIFF_EXAMPLES=1000 for a long run.
    max_examples=int(os.environ.get("EXPERIMENT_DIFF_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    funnel=funnels(),
    events=streams(),
    prop=st.sampled_from(["k", "n"]),
    segment=st.lists(filters, max_size=2),
)
def test_variant_counts_equal_reference(
    ch: ClickHouse,
    funnel: FunnelDefinition,
    events: list[funnel_reference.RefEvent],
    prop: str,
    segment: list[dict[str, object]],
) -> None:
    """With a segment too: filters drawn as the report's step filters are."""
    chosen = tuple(PropertyFilter.model_validate(f) for f in segment)
    project = f"x{next(_projects)}"
    funnel = funnel.model_copy(update={"project": project})
    insert(ch, project, events)
    start, end = ms_to_datetime(START), ms_to_datetime(END)
    query = experiment_sql(compile_funnel(funnel), project, start, end, prop, chosen)
    rows = ch.query_rows_sync(*query)
    got = counts_from_rows(rows, len(funnel.steps))
    want = experiment_reference.variant_counts(funnel, events, START, END, prop, chosen)
    assert (got.reached, got.several_values, got.unassigned) == (
        want.reached,
        want.several_values,
        want.unassigned,
    )
