"""The OpenAPI 3.1 document of the admin API, served at /admin/openapi.json.

Paths are written out here; request bodies come from the same pydantic models the handlers
validate with, so the document cannot drift from what is accepted.
"""
from __future__ import annotations

from functools import cache
from typing import Any

from balancer.controls import ScaleRequest, SourceUpdate
from config.events import EventSpec

_REF = "#/components/schemas/{model}"


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


_ERROR = _json(_ref("Error"), "Error, with a message")
_OBJECT = {"type": "object"}


def _op(summary: str, ok: dict[str, Any], *, errors: tuple[int, ...] = (), body: str | None = None,
        params: list[dict[str, Any]] | None = None, mutating: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, "401": _ERROR}}
    for code in errors:
        op["responses"][str(code)] = _ERROR
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
        op["responses"]["400"] = _ERROR
    if params:
        op["parameters"] = params
    if mutating:
        op["description"] = "Requires the admin token (bearer, or basic auth password) when one is configured."
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


@cache
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": {"type": "object", "required": ["error"],
                                         "properties": {"error": {"type": "string"}}}}
    for model in (EventSpec, SourceUpdate, ScaleRequest):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    pool = _path_param("name", "Pool name, as in pools.yaml.")
    return {
        "openapi": "3.1.0",
        "info": {"title": "warmfront admin API", "version": "1"},
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "basic": {"type": "http", "scheme": "basic"}}},
        "security": [{"bearer": []}, {"basic": []}, {}],
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": _json(_OBJECT)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/admin/status": {"get": _op("Pools, members, desired vs actual, forecasts, sources", _json(_OBJECT))},
            "/admin/dashboard": {"get": {"summary": "HTML dashboard", "responses": {
                "200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/admin/openapi.json": {"get": _op("This document", _json(_OBJECT))},
            "/admin/events": {
                "get": _op("List events (events.yaml and the API)", _json(_OBJECT)),
                "post": {**_op("Add or replace an event", _json(_OBJECT), body="EventSpec", mutating=True),
                         "responses": {"200": _json(_OBJECT, "Replaced"), "201": _json(_OBJECT, "Created"),
                                       "400": _ERROR, "401": _ERROR, "413": _ERROR}},
            },
            "/admin/events/{name}": {
                "get": _op("One event", _json(_OBJECT), errors=(404,), params=[_path_param("name", "Event name.")]),
                "delete": _op("Remove an event", _json(_OBJECT), errors=(404,),
                              params=[_path_param("name", "Event name.")], mutating=True),
            },
            "/admin/sources": {"get": _op("Sources with their controls and traffic", _json(_OBJECT))},
            "/admin/sources/{id}": {
                "get": _op("One source's controls", _json(_OBJECT), params=[_path_param("id", "Source id.")]),
                "put": _op("Set predictive opt-in, workload profile, latency sensitivity", _json(_OBJECT),
                           body="SourceUpdate", errors=(413,), params=[_path_param("id", "Source id.")],
                           mutating=True),
            },
            "/admin/costs": {"get": {**_op("Container-seconds per pool and tier, attributed to sources", _json(_OBJECT),
                                           errors=(400,), params=[
                _query("since", "Epoch seconds, ISO 8601 or a duration before now (`1h`). Default 24h ago."),
                _query("until", "Same forms as since. Default now."),
                _query("format", "json (default) or csv; `Accept: text/csv` also gives csv.",
                       {"type": "string", "enum": ["json", "csv"]})])}},
            "/admin/pools/{name}/scale": {
                "post": _op("Pin or bound desired ready members for a while, with a reason", _json(_OBJECT),
                            body="ScaleRequest", errors=(404, 413), params=[pool], mutating=True),
                "delete": _op("Clear the override", _json(_OBJECT), errors=(404,), params=[pool], mutating=True),
            },
            "/admin/pools/{name}/members/{id}/drain": {
                "post": _op("Drain one ready member (its place is refilled)", _json(_OBJECT), errors=(404, 409),
                            params=[pool, _path_param("id", "Member id.")], mutating=True),
            },
            "/admin/reload": {
                "post": _op("Re-read the YAML; 400 with file:line: key when invalid (the running config stays)",
                            _json(_OBJECT), errors=(400, 409), mutating=True),
            },
        },
    }
