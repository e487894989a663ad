"""The vendors' own Python SDKs — Segment's `segment-analytics-python`, RudderStack's
`rudder-sdk-python`, PostHog's `posthog` — pointed at a running `funnelstream serve`:
each sends a small storefront journey with an identify, part of it while the server is
stopped (the SDK retries until it is back), and resends a message it already delivered.
The funnel report and the stored event count are exactly what the journeys make."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from posthog import Posthog
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from tests.e2e.server import CONFIG, Server, stats

pytestmark = [pytest.mark.clickhouse]

SDK_CONFIG = (
    CONFIG
    + """
[[funnels]]
id = "sdk"
project = "shop"
window_seconds = 86400
steps = [
  { event = "page_view", filters = [{ property = "url", op = "contains", value = "/product" }] },
  { event = "Product Viewed" },
  { event = "Order Completed" },
]

[[funnels]]
id = "sdk_users"
project = "shop"
window_seconds = 86400
count_by = "user"
steps = [{ event = "page_view" }, { event = "Order Completed" }]

[[projects]]
id = "node"
write_key = "wk_node"
read_key = "rk_node"
admin_key = "ak_node"

[[funnels]]
id = "node_sdk"
project = "node"
window_seconds = 86400
steps = [
  { event = "page_view", filters = [{ property = "url", op = "contains", value = "/product" }] },
  { event = "Product Viewed" },
  { event = "identify" },
  { event = "Order Completed" },
]
"""
)
NODE_DIR = Path(__file__).resolve().parents[1] / "sdk" / "node"
# Per SDK: three visitors; the first buys (identified before the order), the second only
# views the product, the third leaves after the landing page.
VISITORS = 3
PRODUCT_URL = "https://shop.example/product/tee"


class Journey:
    """One SDK's calls, in the storefront's words; each client spells them its own way."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0

    def anon(self, i: int) -> str:
        return f"{self.name}-anon-{i}"

    def user(self, i: int) -> str:
        return f"{self.name}-user-{i}"


class SegmentJourney(Journey):
    def __init__(self, name: str, client: Any) -> None:
        super().__init__(name)
        self.client = client
        self.at = datetime.now(UTC) - timedelta(minutes=30)

    def _tick(self) -> datetime:
        self.at += timedelta(seconds=5)
        return self.at

    def browse(self, i: int) -> None:
        self.client.page(
            anonymous_id=self.anon(i),
            name="Tee",
            properties={"url": PRODUCT_URL if i < 2 else "https://shop.example/"},
            context={"campaign": {"source": "newsletter"}, "locale": "en-GB"},
            timestamp=self._tick(),
        )
        self.sent += 1
        if i < 2:
            self.client.track(
                anonymous_id=self.anon(i),
                event="Product Viewed",
                properties={"product_id": "tee", "price": 19.5},
                timestamp=self._tick(),
            )
            self.sent += 1

    def buy(self, i: int) -> None:
        self.client.identify(
            user_id=self.user(i),
            anonymous_id=self.anon(i),
            traits={"plan": "gold"},
            timestamp=self._tick(),
        )
        self.client.track(
            user_id=self.user(i),
            anonymous_id=self.anon(i),
            event="Order Completed",
            properties={"revenue": 19.5},
            timestamp=self._tick(),
            message_id=f"order-{self.anon(i)}",
        )
        self.sent += 2

    def resend(self, i: int) -> None:
        """The same order again, same message id (not a UUID: derived per project)."""
        self.client.track(
            user_id=self.user(i),
            anonymous_id=self.anon(i),
            event="Order Completed",
            properties={"revenue": 19.5},
            timestamp=self.at,
            message_id=f"order-{self.anon(i)}",
        )

    def alias(self, i: int) -> None:
        self.client.alias(previous_id=self.user(i), user_id=f"{self.user(i)}-new")

    def flush(self) -> None:
        self.client.flush()


class PosthogJourney(Journey):
    def __init__(self, client: Posthog) -> None:
        super().__init__("posthog")
        self.client = client
        self.at = datetime.now(UTC) - timedelta(minutes=30)
        self.order_ids: dict[int, str] = {}

    def _tick(self) -> datetime:
        self.at += timedelta(seconds=5)
        return self.at

    def browse(self, i: int) -> None:
        self.client.capture(
            "$pageview",
            distinct_id=self.anon(i),
            properties={
                "$current_url": PRODUCT_URL if i < 2 else "https://shop.example/",
                "utm_source": "newsletter",
            },
            timestamp=self._tick(),
        )
        self.sent += 1
        if i < 2:
            self.client.capture(
                "Product Viewed",
                distinct_id=self.anon(i),
                properties={"product_id": "tee"},
                timestamp=self._tick(),
            )
            self.sent += 1

    def buy(self, i: int) -> None:
        # posthog-python has no identify(): the server SDKs link an anonymous id to a
        # person with `$identify` and `$anon_distinct_id`, as posthog-js does.
        self.client.capture(
            "$identify",
            distinct_id=self.user(i),
            properties={"$anon_distinct_id": self.anon(i), "$set": {"plan": "gold"}},
            timestamp=self._tick(),
        )
        self.order_ids[i] = str(uuid.uuid4())
        self.client.capture(
            "Order Completed",
            distinct_id=self.anon(i),
            properties={"revenue": 19.5},
            timestamp=self._tick(),
            uuid=self.order_ids[i],
        )
        self.sent += 2

    def resend(self, i: int) -> None:
        self.client.capture(
            "Order Completed",
            distinct_id=self.anon(i),
            properties={"revenue": 19.5},
            timestamp=self.at,
            uuid=self.order_ids[i],
        )

    def alias(self, i: int) -> None:
        self.client.alias(previous_id=self.user(i), distinct_id=f"{self.user(i)}-new")

    def flush(self) -> None:
        self.client.flush(timeout_seconds=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("sdk") / "data", SDK_CONFIG).start()
    yield srv
    srv.stop()


def journeys(base: str) -> list[Journey]:
    common = {"max_retries": 10, "upload_interval": 0.05}
    return [
        SegmentJourney("segment", SegmentClient("wk_test", host=base, **common)),
        SegmentJourney("rudder", RudderClient("wk_test", host=base, **common)),
        PosthogJourney(
            Posthog("wk_test", host=base, max_retries=10, flush_interval=0.05, gzip=True)
        ),
    ]


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target)
    thread.start()
    return thread


def test_sdk_journeys_survive_a_restart_and_report_exactly(server: Server) -> None:
    clients = journeys(server.base)
    for journey in clients:
        for i in range(VISITORS):
            journey.browse(i)
        journey.flush()

    # The orders are sent while the server is down: each SDK keeps its batch and retries.
    server.stop()
    for journey in clients:
        journey.buy(0)
    flushing = [in_thread(journey.flush) for journey in clients]
    time.sleep(1.0)
    server.start()
    for thread in flushing:
        thread.join(90)
        assert not thread.is_alive()

    # A resend of a delivered message, and an identity merge (dead-lettered, not stored).
    for journey in clients:
        journey.resend(0)
        journey.alias(0)
        journey.flush()
    server.wait_processed()

    expected_events = sum(journey.sent for journey in clients)
    assert stats(server)["events"] == expected_events
    steps = [s["visitors"] for s in server.report("sdk")["steps"]]
    assert steps == [2 * len(clients), 2 * len(clients), len(clients)]
    users = [s["visitors"] for s in server.report("sdk_users")["steps"]]
    assert users == [VISITORS * len(clients), len(clients)]
    assert stats(server)["dead_letters"] == len(clients)
    metrics = httpx.get(f"{server.base}/metrics", timeout=10).text
    for protocol in ("segment", "posthog"):
        assert (
            f'funnelstream_ingest_protocol_events_total{{process="ingest",protocol="{protocol}"}}'
            in metrics
        )


def test_flags_endpoint_answers_no_flags(server: Server) -> None:
    client = Posthog("wk_test", host=server.base, max_retries=0)
    assert client.get_all_flags("someone") == {}
    r = httpx.post(f"{server.base}/flags/?v=2", json={"token": "wk_test"}, timeout=10)
    assert r.status_code == 200
    assert r.json()["flags"] == {}


def test_read_key_refused_by_scope(server: Server) -> None:
    r = httpx.post(
        f"{server.base}/v1/track",
        auth=("rk_test", ""),
        json={"anonymousId": "a", "event": "x"},
        timeout=10,
    )
    assert r.status_code == 403
    assert r.json()["field"] == "writeKey"


def test_node_sdks_send_a_journey(server: Server) -> None:
    """`@segment/analytics-node` and `posthog-node` (tests/sdk/node, installed by
    scripts/setup.sh) from a small script, into a project of their own."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    assert (NODE_DIR / "node_modules").is_dir(), "run scripts/setup.sh (npm ci in tests/sdk/node)"
    done = subprocess.run(
        ["node", "journey.mjs", server.base, "wk_node"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    server.wait_processed()
    read = {"Authorization": "Bearer rk_node"}
    r = httpx.get(f"{server.base}/v1/funnels/node_sdk/report", headers=read, timeout=60)
    assert [s["visitors"] for s in r.json()["steps"]] == [4, 2, 2, 2]
    r = httpx.get(f"{server.base}/v1/stats", headers=read, timeout=60)
    assert r.json()["events"] == 10
