"""A seeded storefront: visitors walk home → product → cart → checkout → purchase.

Used by `funnelstream serve --demo`, the end-to-end tests and the benchmark. Every
visitor's depth is drawn up front, so the expected funnel is known exactly.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

STEPS = ("page_view", "product_view", "add_to_cart", "checkout_started", "purchase")
# Share of visitors continuing past each step.
CONTINUE = (0.7, 0.5, 0.6, 0.7)


@dataclass(frozen=True, slots=True)
class DemoTraffic:
    events: list[dict[str, object]]
    reached: list[int]  # visitors reaching each step


def storefront(visitors: int, start_ms: int, seed: int = 7) -> DemoTraffic:
    rng = random.Random(seed)
    events: list[dict[str, object]] = []
    reached = [0] * len(STEPS)
    for v in range(visitors):
        visitor = f"v{seed}-{v}"
        depth = 1
        while depth < len(STEPS) and rng.random() < CONTINUE[depth - 1]:
            depth += 1
        for k in range(depth):
            reached[k] += 1
        ts = start_ms + rng.randrange(0, 3_600_000)
        source = rng.choice(["google", "newsletter", "direct"])
        for k in range(depth):
            ts += rng.randrange(1_000, 120_000)
            events.append(
                {
                    "event": STEPS[k],
                    "visitor_id": visitor,
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "timestamp": ts,
                    "properties": {
                        "url": f"https://shop.example/{STEPS[k]}",
                        "utm_source": source,
                        **({"revenue": 42.5} if STEPS[k] == "purchase" else {}),
                    },
                }
            )
    events.sort(key=lambda e: int(str(e["timestamp"])))
    return DemoTraffic(events, reached)
