"""What the query API's OpenAPI document says beyond what FastAPI derives from the routes.

* Funnel bodies: `POST /v1/funnels` and the ad-hoc report read a raw object (validated by
  `parse_definition`, which names the field and rule at fault); the document shows it as
  the funnel definition of schemas/funnels.py, without `project` (the key names it).
* Links: the funnel a `POST /v1/funnels` answers (`201`, its `id`) feeds every operation
  with a `{funnel_id}` path parameter, so a client (and schemathesis' stateful run,
  tests/contract/) can follow create → report, live, analysis, whatever routes exist.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from schemas.funnels import FunnelDefinition

FUNNEL_IN = "FunnelIn"
_REF = "#/components/schemas/{model}"
_EXAMPLE = {
    "id": "checkout",
    "name": "Checkout",
    "window_seconds": 86400,
    "steps": [{"event": "product_view"}, {"event": "add_to_cart"}, {"event": "purchase"}],
}


def funnel_in_schema(components: dict[str, Any]) -> dict[str, Any]:
    """A `$ref` to the funnel definition as a request sends it, registered in `components`."""
    schema = FunnelDefinition.model_json_schema(ref_template=_REF)
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    schema["properties"].pop("project", None)
    schema["required"] = [r for r in schema.get("required", []) if r != "project"]
    schema["examples"] = [_EXAMPLE]
    schema["title"] = FUNNEL_IN
    components[FUNNEL_IN] = schema
    return {"$ref": _REF.format(model=FUNNEL_IN)}


def add_funnel_bodies(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    ref = funnel_in_schema(components)
    create = schema.get("paths", {}).get("/v1/funnels", {}).get("post")
    if create is not None:
        create["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref, "example": _EXAMPLE}},
        }
    adhoc = components.get("AdHocReportIn", {}).get("properties", {})
    if "funnel" in adhoc:
        adhoc["funnel"] = {**ref, "description": adhoc["funnel"].get("description", "")}


def add_funnel_links(schema: dict[str, Any]) -> None:
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    create = paths.get("/v1/funnels", {}).get("post")
    if create is None:
        return
    links: dict[str, Any] = {}
    for path, operations in paths.items():
        if "{funnel_id}" not in path:
            continue
        for method, operation in operations.items():
            operation_id = operation.get("operationId")
            if operation_id is None:
                continue
            links[f"{method.upper()} {path}"] = {
                "operationId": operation_id,
                "parameters": {"funnel_id": "$response.body#/id"},
            }
    created = create.get("responses", {}).get("201")
    if created is not None and links:
        created["links"] = links


def install_query_openapi(app: FastAPI) -> None:
    """Extends the document `app.openapi` builds (once; it is cached on the app)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        # Both steps are idempotent: the cached document may pass through again.
        schema = build()
        add_funnel_bodies(schema)
        add_funnel_links(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
