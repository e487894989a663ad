"""The experiment route over a real engine: planted variants, assignment (several values
excluded and counted, no value counted apart), the statistics wired to the right counts,
and refusals naming the field. (Counts are held to the oracle on random data in
tests/query_api/test_experiment_differential.py; the statistics to published values in
tests/query_api/test_experiment.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from funnelstream.clickhouse import ClickHouse
from query_api.routes.experiment import router
from tests.query_api.routes.test_analysis import RANGE, READ, events, route_client

pytestmark = pytest.mark.clickhouse

URL = "/v1/funnels/checkout/experiment"


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    yield from route_client(ch, router)


@pytest.fixture
def planted(ch: ClickHouse) -> None:
    """A: 40 visitors, 20 reach cart, 4 buy. B: 40 visitors, 30 reach cart, 24 buy.
    Two visitors see both values; three enter without one. The variant is set on a
    page event before the funnel (any event name assigns)."""
    rows: list[tuple[str, str, int, dict[str, str]]] = []
    for variant, carts, buys in (("A", 20, 4), ("B", 30, 24)):
        for i in range(40):
            v = f"{variant}{i}"
            rows.append((v, "page", 0, {"variant": variant}))
            rows.append((v, "view", 1, {}))
            if i < carts:
                rows.append((v, "cart", 2, {}))
            if i < buys:
                rows.append((v, "buy", 3, {}))
    for v in ("both1", "both2"):
        rows += [(v, "view", 0, {"variant": "A"}), (v, "buy", 5, {"variant": "B"})]
    rows += [(f"none{i}", "view", 0, {}) for i in range(3)]
    # Seen with a variant but never in the funnel: in no count.
    rows.append(("outside", "page", 0, {"variant": "B"}))
    events(ch, rows)


def get(client: TestClient, **params: Any) -> Any:
    return client.get(URL, params={**RANGE, "property": "variant", **params}, headers=READ)


@pytest.mark.usefixtures("planted")
def test_variants_counts_and_verdict(client: TestClient) -> None:
    r = get(client, control="A")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["several_values"], body["unassigned"]) == (2, 3)
    reached = {
        v["value"]: [s["conversion_from_start"]["successes"] for s in v["steps"]]
        for v in body["variants"]
    }
    assert reached == {"A": [40, 20, 4], "B": [40, 30, 24]}
    assert [v["control"] for v in body["variants"]] == [True, False]
    kinds = [(c["kind"], c["from_step"], c["to_step"]) for c in body["comparisons"]]
    assert kinds == [("step", 0, 1), ("step", 1, 2), ("end_to_end", 0, 2)]
    end = body["comparisons"][2]
    assert (end["control_rate"]["successes"], end["control_rate"]["trials"]) == (4, 40)
    assert (end["variant_rate"]["successes"], end["variant_rate"]["trials"]) == (24, 40)
    assert end["difference"] == pytest.approx(0.5)
    assert end["test"] == "z" and end["significant"] is True
    assert end["p_value_adjusted"] >= end["p_value"]
    assert body["variants"][1]["verdict"] == "significant"
    assert body["variants"][0]["verdict"] is None
    assert body["family_size"] == 3

    # At alpha 0.01 the first step's difference (0.5 vs 0.75, p ~ 0.02) is not
    # significant with 40 per group, and a 1-point effect needs far more entities.
    flipped = get(client, control="B", mde=0.01, alpha=0.01).json()
    first = flipped["comparisons"][0]
    assert first["verdict"] == "not yet" and first["still_needed"] > 1000


@pytest.mark.usefixtures("planted")
@pytest.mark.parametrize(
    ("params", "field", "error"),
    [
        ({"control": "C"}, "control", "unknown_control"),
        ({"control": "A", "alpha": "0.7"}, "alpha", "invalid_request"),
        ({"control": "A", "mde": "0"}, "mde", "invalid_request"),
        ({"control": "A", "alpha": "nan"}, "alpha", "invalid_request"),
        ({"control": "A", "mde": "inf"}, "mde", "invalid_request"),
        ({"control": "A", "from": "yesterday"}, "from", "invalid_time"),
        ({}, "control", "invalid_request"),
    ],
)
def test_refusals_name_the_field(
    client: TestClient, params: dict[str, str], field: str, error: str
) -> None:
    r = get(client, **params)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == error and field in r.json()["field"], r.json()


@pytest.mark.usefixtures("planted")
def test_csv(client: TestClient) -> None:
    r = client.get(
        URL,
        params={**RANGE, "property": "variant", "control": "A"},
        headers={**READ, "Accept": "text/csv"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0].startswith("variant,kind,from_step,to_step,control_successes")
    assert [line.split(",")[:4] for line in lines[1:]] == [
        ["B", "step", "0", "1"], ["B", "step", "1", "2"], ["B", "end_to_end", "0", "2"]
    ]  # fmt: skip


@pytest.mark.usefixtures("planted")
def test_segment(client: TestClient) -> None:
    segment = '[{"property": "variant", "op": "eq", "value": "B"}]'
    body = get(client, control="B", segment=segment).json()
    # B's visitors, and the two seen with both values (one of their events has B).
    assert [v["value"] for v in body["variants"]] == ["B"]
    assert (body["several_values"], body["unassigned"]) == (2, 0)
    assert body["comparisons"] == []


@pytest.mark.usefixtures("planted")
@pytest.mark.parametrize(
    ("segment", "field", "error"),
    [
        ("not json", "segment", "invalid_segment"),
        ("[]", "segment", "invalid_segment"),
        ('[{"property": "x", "op": "bogus"}]', "segment[0].op", "invalid_segment"),
        ('[{"property": "x", "op": "regex", "value": "("}]', "segment[0].value", None),
    ],
)
def test_segment_refusals_name_the_field(
    client: TestClient, segment: str, field: str, error: str | None
) -> None:
    r = get(client, control="A", segment=segment)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.json()
    assert error is None or r.json()["error"] == error
