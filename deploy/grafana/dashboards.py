"""The Grafana dashboards, as code: `python deploy/grafana/dashboards.py` writes
deploy/grafana/dashboards/*.json, which Grafana provisions by file
(deploy/grafana/provisioning/dashboards/funnelstream.yml). Edit this file, not the JSON:
tests/deploy/test_dashboards.py fails when the committed JSON differs from what this makes.

Built with grafana-foundation-sdk (Grafana's own typed builders, generated from its
schemas): a panel option misspelt here is a type error, not a silently ignored key.

Every panel queries Prometheus (funnelstream/metrics.py; docs/metrics.md). The funnel
panels read the live figures the processor exports; historical reports over any range are
the query API's (`/v1/funnels/{id}/report`), which answers from ClickHouse with the exact
funnel rule, so no panel re-implements that rule in SQL.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    stat,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models

OUT = Path(__file__).parent / "dashboards"
PROMETHEUS = dashboard_models.DataSourceRef(type_val="prometheus", uid="prometheus")

# The funnel selected by the dashboard's variables.
FUNNEL = 'project="$project", funnel="$funnel"'
TRANSITIONS = "funnelstream_funnel_transitions_total"
AT_STAGE = "funnelstream_funnel_visitors_at_stage"
TO_CONVERT = "funnelstream_funnel_seconds_to_convert_bucket"
CORRECTIONS = "funnelstream_funnel_transition_corrections_total"


def reached(window: str, extra: str = "") -> str:
    """Visitors reaching each step of the selected funnel within `window`."""
    return f"sum by (step) (increase({TRANSITIONS}{{{FUNNEL}{extra}}}[{window}]))"


def from_start(window: str) -> str:
    """Each step's visitors over the first step's, within `window`."""
    first = f'sum(increase({TRANSITIONS}{{{FUNNEL}, step="1"}}[{window}]))'
    return f"{reached(window)} / on () group_left () {first}"


def from_previous(window: str) -> str:
    """Each step's visitors over the step before's: the step before is matched through
    the counter's from_step label (funnelstream/metrics.py)."""
    steps = f'sum by (step, from_step) (increase({TRANSITIONS}{{{FUNNEL}, step!="1"}}[{window}]))'
    before = f'label_replace({reached(window)}, "from_step", "$1", "step", "(.+)")'
    return f"{steps} / on (from_step) group_left () {before}"


def dropped_after(window: str) -> str:
    """Per step, the visitors who reached it and not the next (the last step has none)."""
    next_step = (
        f'sum by (step) (label_replace(increase({TRANSITIONS}{{{FUNNEL}, step!="1"}}'
        f'[{window}]), "step", "$1", "from_step", "(.+)"))'
    )
    return f"{reached(window)} - on (step) {next_step}"


def time_to_convert(quantile: float, window: str) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (le, step) "
        f"(increase({TO_CONVERT}{{{FUNNEL}}}[{window}])))"
    )


def query(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q


Panel = timeseries.Panel | bargauge.Panel | stat.Panel


def place(panel: Panel, x: int, y: int, w: int, h: int) -> Panel:
    return panel.grid_pos(dashboard_models.GridPos(h=h, w=w, x=x, y=y))


def series(title: str, *targets: prometheus.Dataquery, unit: str = "") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).datasource(PROMETHEUS)
    for target in targets:
        panel = panel.with_target(target)
    return panel.unit(unit) if unit else panel


def bars(
    title: str, *targets: prometheus.Dataquery, unit: str = "", description: str = ""
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .display_mode(common_models.BarGaugeDisplayMode.BASIC)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if description:
        panel = panel.description(description)
    for target in targets:
        panel = panel.with_target(target)
    return panel.unit(unit) if unit else panel


def variable(name: str, label: str, expr: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(PROMETHEUS)
        .query({"query": expr, "refId": f"{name}-variable"})
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
    )


def pipeline() -> dashboard.Dashboard:
    """Pipeline health: ingest, processor, ClickHouse writes, query API."""
    p99 = "histogram_quantile(0.99, sum by (le) (rate({}[5m])))"
    panels: list[Panel] = [
        series("Events accepted /s", query("sum(rate(funnelstream_ingest_events_total[1m]))")),
        series(
            "Ingest refusals /s by reason",
            query("sum by (reason) (rate(funnelstream_ingest_rejected_total[1m]))", "{{reason}}"),
        ),
        series(
            "Log append p99 (s)",
            query(p99.format("funnelstream_ingest_append_seconds_bucket")),
            unit="s",
        ),
        series(
            "Processor messages /s",
            query("sum(rate(funnelstream_processor_messages_total[1m]))"),
        ),
        series("Processor lag (messages)", query("sum(funnelstream_processor_lag_messages)")),
        series(
            "Freshness p50 / p99 (s)",
            query(
                "histogram_quantile(0.5, sum by (le) "
                "(rate(funnelstream_processor_freshness_seconds_bucket[5m])))",
                "p50",
            ),
            query(p99.format("funnelstream_processor_freshness_seconds_bucket"), "p99", ref="B"),
            unit="s",
        ),
        series(
            "ClickHouse write p99 (s)",
            query(p99.format("funnelstream_processor_write_seconds_bucket")),
            unit="s",
        ),
        series(
            "Dead letters /s by reason",
            query(
                "sum by (reason) (rate(funnelstream_processor_dead_letters_total[5m]))",
                "{{reason}}",
            ),
        ),
        series(
            "Query p99 (s) by route",
            query(
                "histogram_quantile(0.99, sum by (le, route) "
                "(rate(funnelstream_query_seconds_bucket[5m])))",
                "{{route}}",
            ),
            unit="s",
        ),
        series(
            "Users rebuilt /s and rebuild p99 (s)",
            query("sum(rate(funnelstream_processor_users_rebuilt_total[1m]))", "users/s"),
            query(
                p99.format("funnelstream_processor_user_rebuild_seconds_bucket"),
                "p99 s",
                ref="B",
            ),
        ),
        series(
            "Components up (1) or failed (0)",
            query("min by (component) (funnelstream_component_up)", "{{component}}"),
        ),
        stat.Panel()
        .title("Funnels quarantined")
        .description("Saved definitions left out of the live state: see the processor's log")
        .datasource(PROMETHEUS)
        .with_target(query("count(funnelstream_funnels_quarantined == 1) or vector(0)")),
    ]
    board = (
        dashboard.Dashboard("Funnelstream")
        .uid("funnelstream")
        .tags(["funnelstream"])
        .refresh("10s")
        .time("now-1h", "now")
    )
    for n, panel in enumerate(panels):
        board = board.with_panel(place(panel, (n % 3) * 8, (n // 3) * 8, 8, 8))
    return board


def funnels() -> dashboard.Dashboard:
    """One funnel, chosen by the project and funnel variables."""
    step = "step {{step}}"
    panels: list[tuple[Panel, tuple[int, int, int, int]]] = [
        (
            bars(
                "Visitors at each stage now",
                query(f"sum by (step) ({AT_STAGE}{{{FUNNEL}}})", step, instant=True),
                description="Visitors whose deepest step is this one, as the processors "
                "hold them now (the live API's at_stage)",
            ),
            (0, 0, 8, 9),
        ),
        (
            bars(
                "Visitors reaching each step (time range)",
                query(reached("$__range"), step, instant=True),
                description="Transitions as the events arrived; a late event's changes are "
                "in the corrections panel",
            ),
            (8, 0, 8, 9),
        ),
        (
            bars(
                "Conversion from the first step (time range)",
                query(from_start("$__range"), step, instant=True),
                unit="percentunit",
            ),
            (16, 0, 8, 9),
        ),
        (
            bars(
                "Conversion from the step before (time range)",
                query(from_previous("$__range"), "step {{from_step}} → {{step}}", instant=True),
                unit="percentunit",
            ),
            (0, 9, 8, 9),
        ),
        (
            bars(
                "Drop-off after each step (time range)",
                query(dropped_after("$__range"), "after step {{step}}", instant=True),
                description="Visitors who reached the step and not the next within the range "
                "(some may still go on)",
            ),
            (8, 9, 8, 9),
        ),
        (
            bars(
                "Time to convert from the first step, median and p90 (time range)",
                query(time_to_convert(0.5, "$__range"), "median, step {{step}}", instant=True),
                query(
                    time_to_convert(0.9, "$__range"), "p90, step {{step}}", ref="B", instant=True
                ),
                unit="s",
            ),
            (16, 9, 8, 9),
        ),
        (
            series(
                "Conversion trend from the first step (last hour, rolling)",
                query(from_start("1h"), step),
                unit="percentunit",
            ),
            (0, 18, 12, 9),
        ),
        (
            series(
                "Visitors at each stage over time",
                query(f"sum by (step) ({AT_STAGE}{{{FUNNEL}}})", step),
            ),
            (12, 18, 12, 9),
        ),
        (
            series(
                "Steps reached /s",
                query(f"sum by (step) (rate({TRANSITIONS}{{{FUNNEL}}}[$__rate_interval]))", step),
            ),
            (0, 27, 12, 9),
        ),
        (
            series(
                "Corrections by late events /s",
                query(
                    f"sum by (kind, step) (rate({CORRECTIONS}{{{FUNNEL}}}[$__rate_interval]))",
                    "{{kind}}, step {{step}}",
                ),
            ),
            (12, 27, 12, 9),
        ),
    ]
    board = (
        dashboard.Dashboard("Funnelstream funnels")
        .uid("funnelstream-funnels")
        .tags(["funnelstream"])
        .refresh("10s")
        .time("now-6h", "now")
        .with_variable(variable("project", "Project", f"label_values({AT_STAGE}, project)"))
        .with_variable(
            variable("funnel", "Funnel", f'label_values({AT_STAGE}{{project="$project"}}, funnel)')
        )
    )
    for panel, (x, y, w, h) in panels:
        board = board.with_panel(place(panel, x, y, w, h))
    return board


DASHBOARDS = {"funnelstream.json": pipeline, "funnelstream-funnels.json": funnels}


def render(make: object) -> str:
    assert callable(make)
    return json.dumps(make().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> None:
    for name, make in DASHBOARDS.items():
        (OUT / name).write_text(render(make))
        print(f"wrote {OUT / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
