"""What every protocol translation produces, and the rules they share."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

# Namespace of the event ids derived from a vendor message id that is not a UUID. Fixed
# forever: a resend after an upgrade must derive the same id to dedupe.
MESSAGE_ID_NAMESPACE = uuid.UUID("5b0c3f3e-8d2a-4f0e-9a51-6f756e6e656c")


@dataclass(frozen=True, slots=True)
class SdkEvent:
    """One vendor message as our event (`schemas/events.py` `parse_event` reads `event`),
    where it sat in the request and what to call our fields when naming a fault."""

    index: int
    path: str  # the message's place in the SDK's body: "batch[3]", "" for a lone message
    event: dict[str, Any]
    # ours → the SDK's name, for fields whose name differs (`visitor_id` → `anonymousId`)
    field_names: dict[str, str]
    # The browser's user agent the SDK reported for this message ("" = the request's).
    user_agent: str = ""


@dataclass(frozen=True, slots=True)
class Merge:
    """An identity merge (Segment `alias`, PostHog `$create_alias`): accepted and kept as a
    dead letter with reason `unsupported_merge` (docs/sdk-ingestion.md says why)."""

    visitor_id: str
    detail: str
    payload: dict[str, Any]


@dataclass(slots=True)
class Translated:
    events: list[SdkEvent] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    # Messages refused before they became events: index, field (SDK names), message.
    errors: list[dict[str, Any]] = field(default_factory=list)

    def refuse(self, index: int, path: str, name: str, message: str) -> None:
        self.errors.append({"index": index, "field": join(path, name), "message": message})


def join(path: str, name: str) -> str:
    if not path:
        return name
    return f"{path}.{name}" if name else path


def event_id_for(message_id: object, project_id: str) -> object:
    """A vendor message id as our event id: a UUID as it is; any other string (Segment's
    `ajs-next-…`, a server's own ids) as a UUIDv5 of (project, id), so a resend of the same
    message dedupes; anything else is passed on for validation to refuse by name."""
    if isinstance(message_id, str) and message_id:
        try:
            return str(uuid.UUID(message_id))
        except ValueError:
            return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{project_id}\x1f{message_id}"))
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        return event_id_for(str(message_id), project_id)
    return message_id


def id_string(value: object) -> str | None:
    """A vendor id (strings; numbers are common in server SDKs) as a string; None if it is
    absent, empty or not an id."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value) if value == value else None
    if isinstance(value, str) and value.strip():
        return value
    return None


def text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def copy_missing(target: dict[str, Any], source: object, names: dict[str, str]) -> None:
    """`target[ours] = source[theirs]` for each pair whose value is present and not already
    set by the message's own properties (a property the sender set wins)."""
    if not isinstance(source, dict):
        return
    for theirs, ours in names.items():
        value = source.get(theirs)
        if value is not None and value != "" and ours not in target:
            target[ours] = value


class BodyError(ValueError):
    """The body as a whole is unusable: 400 (or `status`) naming `field` (SDK names)."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


def field_name(path: str, names: dict[str, str], ours: str) -> str:
    """Our field path (`visitor_id`, `properties.price`) in the SDK's names, within the
    message at `path`."""
    head, _, rest = ours.partition(".")
    theirs = names.get(head, head)
    return join(path, f"{theirs}.{rest}" if rest else theirs)
