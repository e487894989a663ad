"""Experiment comparison of a saved funnel across the values of a property: conversions
with intervals, differences and lifts against a control, corrected p-values, power and a
verdict (method: query_api/experiment.py, docs/experiments.md)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from funnelstream import metrics
from funnelstream.http_errors import keyed_route_errors
from query_api import experiment
from query_api.csv_answer import CSV_RESPONSE, csv_response, wants_csv
from query_api.deps import ClickHouseDep, CompilerDep, ReadProject
from query_api.routes.funnel_lookup import ReportFunnel
from query_api.routes.reports import From, To, parse_range
from query_api.routes.segments import SegmentQuery, parse_segment
from query_api.sql.experiment import experiment_sql

router = APIRouter(
    prefix="/v1/funnels", tags=["funnel decisions"], responses=keyed_route_errors(404, 409, 503)
)

# More variants than this is a property that is not an experiment (a URL, an id).
MAX_VARIANTS = 50


class RateOut(BaseModel):
    successes: int
    trials: int
    rate: float | None = Field(description="successes / trials; null without trials")
    ci_low: float | None = Field(description="Wilson score interval at 1 - alpha")
    ci_high: float | None


class VariantStepOut(BaseModel):
    index: int
    event: str
    conversion_from_start: RateOut = Field(
        description="Entities reaching this step of those of the variant reaching step 1"
    )


class VariantOut(BaseModel):
    value: str
    control: bool
    entities: int = Field(description="Entities of the variant that reached step 1")
    steps: list[VariantStepOut]
    verdict: experiment.Verdict | None = Field(
        description="The end-to-end comparison's verdict against the control (null for it)"
    )


class ComparisonOut(BaseModel):
    variant: str
    kind: str = Field(description="`step` (step-to-step conversion) or `end_to_end`")
    from_step: int = Field(description="0-based: the conversion's denominator step")
    to_step: int = Field(description="0-based: the conversion's numerator step")
    control_rate: RateOut
    variant_rate: RateOut
    difference: float | None = Field(description="variant rate - control rate")
    difference_ci_low: float | None = Field(description="Newcombe hybrid score interval")
    difference_ci_high: float | None
    lift: float | None = Field(description="variant rate / control rate - 1")
    lift_ci_low: float | None = Field(description="log interval of the ratio, minus 1")
    lift_ci_high: float | None
    test: str | None = Field(description="`z` (two-proportion, pooled) or `fisher` (exact)")
    p_value: float | None = Field(description="two-sided, unadjusted")
    p_value_adjusted: float | None = Field(description="Holm-Bonferroni over the family")
    significant: bool
    detectable_difference: float | None = Field(
        description="Smallest absolute difference the current sample detects at power 0.8"
    )
    sample_needed_per_group: int | None = Field(
        description="Entities at `from_step` per group to detect `mde` at power 0.8"
    )
    still_needed: int | None = Field(description="More entities at `from_step`, both groups")
    verdict: experiment.Verdict


class ExperimentOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "funnel_id": "checkout",
                    "property": "variant",
                    "control": "A",
                    "from_": "2025-01-01T00:00:00Z",
                    "to": "2025-01-31T00:00:00Z",
                    "alpha": 0.05,
                    "power": 0.8,
                    "mde": 0.02,
                    "count_by": "visitor",
                    "several_values": 3,
                    "unassigned": 12,
                    "family_size": 2,
                    "variants": [
                        {
                            "value": "A",
                            "control": True,
                            "entities": 1000,
                            "steps": [
                                {
                                    "index": 0,
                                    "event": "view",
                                    "conversion_from_start": {
                                        "successes": 1000,
                                        "trials": 1000,
                                        "rate": 1.0,
                                        "ci_low": 0.9962,
                                        "ci_high": 1.0,
                                    },
                                },
                                {
                                    "index": 1,
                                    "event": "buy",
                                    "conversion_from_start": {
                                        "successes": 100,
                                        "trials": 1000,
                                        "rate": 0.1,
                                        "ci_low": 0.0829,
                                        "ci_high": 0.1202,
                                    },
                                },
                            ],
                            "verdict": None,
                        }
                    ],
                    "comparisons": [],
                    "query_ms": 12.5,
                }
            ]
        }
    )

    funnel_id: str
    property: str
    control: str
    from_: datetime
    to: datetime
    alpha: float
    power: float
    mde: float
    count_by: str
    several_values: int = Field(
        description="Entities that reached step 1 seen with two or more values: excluded"
    )
    unassigned: int = Field(description="Entities that reached step 1 without a value")
    family_size: int = Field(description="Comparisons tested, the m of Holm's correction")
    variants: list[VariantOut]
    comparisons: list[ComparisonOut]
    query_ms: float


def _rate(rate: experiment.Rate) -> RateOut:
    return RateOut(
        successes=rate.successes,
        trials=rate.trials,
        rate=rate.rate,
        ci_low=rate.low,
        ci_high=rate.high,
    )


def _comparison(c: experiment.Comparison) -> ComparisonOut:
    return ComparisonOut(
        variant=c.variant,
        kind=c.kind,
        from_step=c.from_step,
        to_step=c.to_step,
        control_rate=_rate(c.control_rate),
        variant_rate=_rate(c.variant_rate),
        difference=c.difference,
        difference_ci_low=c.difference_low,
        difference_ci_high=c.difference_high,
        lift=c.lift,
        lift_ci_low=c.lift_low,
        lift_ci_high=c.lift_high,
        test=c.test,
        p_value=c.p_value,
        p_value_adjusted=c.p_value_adjusted,
        significant=c.significant,
        detectable_difference=c.detectable_difference,
        sample_needed_per_group=c.sample_needed_per_group,
        still_needed=c.still_needed,
        verdict=c.verdict,
    )


_CSV_HEADER = (
    "variant", "kind", "from_step", "to_step", "control_successes", "control_trials",
    "control_rate", "variant_successes", "variant_trials", "variant_rate", "difference",
    "difference_ci_low", "difference_ci_high", "lift", "lift_ci_low", "lift_ci_high", "test",
    "p_value", "p_value_adjusted", "significant", "detectable_difference",
    "sample_needed_per_group", "still_needed", "verdict",
)  # fmt: skip


def _csv(result: experiment.Experiment) -> Response:
    rows = [
        (
            c.variant,
            c.kind,
            c.from_step,
            c.to_step,
            c.control_rate.successes,
            c.control_rate.trials,
            c.control_rate.rate,
            c.variant_rate.successes,
            c.variant_rate.trials,
            c.variant_rate.rate,
            c.difference,
            c.difference_low,
            c.difference_high,
            c.lift,
            c.lift_low,
            c.lift_high,
            c.test,
            c.p_value,
            c.p_value_adjusted,
            c.significant,
            c.detectable_difference,
            c.sample_needed_per_group,
            c.still_needed,
            c.verdict,
        )  # fmt: skip
        for c in result.comparisons
    ]
    return csv_response(_CSV_HEADER, rows, "experiment")


@router.get(
    "/{funnel_id}/experiment",
    response_model=ExperimentOut,
    summary="Compare the funnel across variants (A/B test)",
    responses=CSV_RESPONSE,
)
async def funnel_experiment(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    property: Annotated[
        str,
        Query(min_length=1, max_length=200, description="The event property naming the variant"),
    ],
    control: Annotated[str, Query(min_length=1, max_length=200, description="The control's value")],
    alpha: Annotated[float, Query(gt=0, lt=0.5, description="Two-sided significance level")] = 0.05,
    mde: Annotated[
        float,
        Query(gt=0, lt=1, description="Minimum detectable effect: an absolute rate difference"),
    ] = 0.02,
    segment: SegmentQuery = None,
    from_: From = None,
    to: To = None,
) -> ExperimentOut | Response:
    """The funnel per value of `property`: an entity belongs to the first value seen on its
    events in [from, to); entities seen with two values are excluded (`several_values`).
    Every step-to-step conversion and the end-to-end conversion of each variant is
    compared with the control's: difference and lift with intervals, a two-sided z-test
    (Fisher's exact test where an expected cell count is below 5), Holm-Bonferroni over
    the whole family, power 0.8 figures for `mde`, and a verdict (`significant`,
    `not yet`, `no difference detectable`). Method: docs/experiments.md. With
    `Accept: text/csv`: one row per comparison."""
    started = time.monotonic()
    start, end = parse_range(from_, to)
    filters = parse_segment(segment, project.id)
    query = experiment_sql(compiler(funnel), funnel.project, start, end, property, filters)
    # ClickHouse errors become HTTP answers in one place: query_api/errors.py.
    rows = await ch.query_rows(*query)
    counts = experiment.counts_from_rows(rows, len(funnel.steps))
    if len(counts.reached) > MAX_VARIANTS:
        raise HTTPException(
            400,
            {
                "error": "too_many_variants",
                "field": "property",
                "message": f"{len(counts.reached)} values; an experiment has at most"
                f" {MAX_VARIANTS}",
            },
        )
    if control not in counts.reached:
        seen = ", ".join(sorted(counts.reached)[:10]) or "none"
        raise HTTPException(
            400,
            {
                "error": "unknown_control",
                "field": "control",
                "message": f"no entity of the funnel has {property}={control!r} in the range;"
                f" values seen: {seen}",
            },
        )
    # Off the event loop: a wide family takes tens of milliseconds of statistics.
    result = await run_in_threadpool(experiment.compare, counts.reached, control, alpha, mde)
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("experiment").observe(elapsed)
    if wants_csv(request):
        return _csv(result)
    labels = [s.label() for s in funnel.steps]
    return ExperimentOut(
        funnel_id=funnel.id,
        property=property,
        control=control,
        from_=start,
        to=end,
        alpha=alpha,
        power=experiment.POWER,
        mde=mde,
        count_by=funnel.count_by,
        several_values=counts.several_values,
        unassigned=counts.unassigned,
        family_size=result.family_size,
        variants=[
            VariantOut(
                value=v.value,
                control=v.value == control,
                entities=v.steps[0].successes,
                steps=[
                    VariantStepOut(index=k, event=labels[k], conversion_from_start=_rate(r))
                    for k, r in enumerate(v.steps)
                ],
                verdict=result.verdicts.get(v.value),
            )
            for v in result.variants
        ],
        comparisons=[_comparison(c) for c in result.comparisons],
        query_ms=round(elapsed * 1000, 2),
    )
