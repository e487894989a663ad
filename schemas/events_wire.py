"""The event as a client sends it, described for the OpenAPI document of `POST /v1/events`.

Validation is `schemas.events.parse_event` (it names each field at fault and corrects
clock skew), shortcut by `schemas/events_fast.py` for bodies whose events are all valid;
these models only describe what it accepts, with its limits, so a client generator or a
contract test knows the body's shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import MAX_ID_LENGTH, MAX_NAME_LENGTH
from schemas.properties import MAX_JSON_DEPTH

_TIME = "ISO-8601 (no zone: UTC) or epoch milliseconds"


class EventIn(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "event": "add_to_cart",
                    "visitor_id": "v-5f2c",
                    "timestamp": "2026-03-01T12:00:00Z",
                    "properties": {"product": {"id": "sku-1", "price": 12.5}},
                }
            ]
        },
    )

    event: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    visitor_id: str | int = Field(description=f"At most {MAX_ID_LENGTH} characters")
    timestamp: str | int | None = Field(
        default=None, description=f"{_TIME}; default: when received. From 2000 to a day ahead"
    )
    event_id: str | None = Field(
        default=None, description="A UUID: the same event sent twice is counted once"
    )
    session_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    user_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    sent_at: str | int | None = Field(
        default=None, description=f"{_TIME}: the client's clock when sending (skew correction)"
    )
    properties: dict[str, Any] | None = Field(
        default=None,
        description=f"At most 32 KiB of JSON, {MAX_JSON_DEPTH} levels deep; integers"
        " within 64 bits (send larger ones as strings)",
    )
    write_key: str | None = Field(
        default=None, description="The project's write key, when no Authorization header"
    )


class BatchIn(BaseModel):
    batch: list[EventIn] = Field(min_length=1)
    write_key: str | None = None
    sent_at: str | int | None = Field(default=None, description=f"{_TIME}, for every event")


class AcceptedOut(BaseModel):
    """202: every valid event is durably stored; 207: `errors` lists the refused ones."""

    accepted: int
    dropped: int | None = Field(default=None, description="Events of bots, dropped")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Refused events: index, field, message"
    )


def request_body_schema() -> dict[str, Any]:
    """`requestBody` of `POST /v1/events`: one event, or `{"batch": [...]}`; self-contained
    (no references), so it can sit in the route's `openapi_extra`."""
    event = EventIn.model_json_schema()
    batch = BatchIn.model_json_schema(ref_template="#/$defs/{model}")
    batch.pop("$defs", None)
    batch["properties"]["batch"]["items"] = event
    example = event["examples"][0]
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"anyOf": [event, batch]},
                "examples": {
                    "single": {"value": example},
                    "batch": {"value": {"batch": [example, {**example, "event": "purchase"}]}},
                },
            }
        },
    }
