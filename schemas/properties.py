"""How event properties are flattened into ClickHouse's Map(String, String).

Nested objects become dotted keys (`product.id`); scalars become strings the way a
reader expects (`true`, `12.5`); lists become JSON. One function, used by the processor
when writing and by funnel matching, so a filter sees what the table holds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

MAX_DEPTH = 3
# Objects and lists a client's JSON value (event properties, a funnel body) may nest. Deeper
# is refused by name: past 3 levels the flattening writes JSON, which orjson cannot write
# past 254 levels (a 500 before this limit).
MAX_JSON_DEPTH = 16
# Integers kept exactly: what orjson reads and writes as an integer (signed or unsigned 64
# bits). Beyond, orjson reads a float and cannot write the Python integer at all.
MIN_INTEGER = -(2**63)
MAX_INTEGER = 2**64 - 1


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


class JsonProblem(NamedTuple):
    path: str
    code: str  # number_out_of_range or nested_too_deep
    message: str


def json_problem(value: Any, path: str, depth: int = 0) -> JsonProblem | None:
    """The first part of a client's JSON value nested deeper than MAX_JSON_DEPTH or holding
    an integer beyond 64 bits, by its path (`properties.cart.items[2].qty`); None when all
    of it can be kept exactly."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not MIN_INTEGER <= value <= MAX_INTEGER:
        return JsonProblem(
            path,
            "number_out_of_range",
            "integer beyond 64 bits: send it as a string to keep it exactly",
        )
    if isinstance(value, dict | list):
        if depth >= MAX_JSON_DEPTH:
            return JsonProblem(
                path, "nested_too_deep", f"nested deeper than {MAX_JSON_DEPTH} levels"
            )
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, list):
                child = f"{path}[{key}]"
            else:
                child = f"{path}.{key}" if path else str(key)
            problem = json_problem(item, child, depth + 1)
            if problem is not None:
                return problem
    return None
