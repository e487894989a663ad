"""How event properties are flattened into ClickHouse's Map(String, String).

Nested objects become dotted keys (`product.id`); scalars become strings the way a
reader expects (`true`, `12.5`); lists become JSON. One function, used by the processor
when writing and by funnel matching, so a filter sees what the table holds.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_DEPTH = 3


def flatten_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else str(int(value))
    return orjson.dumps(value).decode()


def flatten(properties: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in properties.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < MAX_DEPTH:
            out.update(flatten(value, f"{name}.", depth + 1))
        else:
            out[name] = flatten_value(value)
    return out
