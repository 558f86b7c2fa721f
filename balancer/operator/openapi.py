"""The OpenAPI 3.1 document of the admin API, served at /admin/openapi.json.

Paths are written out here; request bodies come from the same pydantic models the handlers
validate with, so the document cannot drift from what is accepted. Every status and content type
a handler can answer with is listed (tests/test_admin_schemathesis.py holds the server to it), and
the security requirement follows the server: with an admin token every path but /healthz answers
401 without it; without one nothing does.

The document is this instance's, so rules that hang on its config are written out exactly: each
pool has its own scale path whose counts go up to that pool's capacity.max (and whose `max >= min`
is listed pair by pair, capacity.max + 1 branches), a maintenance event's `pin` on one of its
pools is bounded the same way, and durations are documented in the forms whose range a pattern can
bound (`duration_pattern`; the API refuses other spellings). Events are documented as `start` +
`duration`; the API also takes `end`, as events.yaml does. A request the document admits is
accepted, or answered 409 where it conflicts with state (the 1000-event and 10000-source caps).
`openapi_document()` without pools is the generic shape, where those rules are words only.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from balancer.operator.controls import ScaleRequest, SourceUpdate
from config.events import MAX_NAME, EventSpec
from config.units import DURATION_PATTERN, EPOCH_PATTERN, int_range_pattern

_REF = "#/components/schemas/{model}"
_OBJECT = {"type": "object"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


_ERROR = _json(_ref("Error"), "Error, with a message")
_ERRORS = {
    400: "Invalid request: the message names the key",
    401: "Missing or wrong admin token",
    404: "No such pool, event, member or path",
    409: "Conflicts with the current state",
    413: "Body larger than 64 KiB",
    415: "Body is not UTF-8 application/json",
}


def _op(summary: str, ok: dict[str, Any], *, auth: bool, errors: tuple[int, ...] = (),
        body: str | dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, created: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    if created:
        responses["201"] = _json(_OBJECT, "Created")
    codes = set(errors)
    if body is not None:
        codes |= {400, 413, 415}
    if any(p["in"] == "path" for p in params or ()):
        codes.add(404)
    if auth:
        codes.add(401)
    for code in sorted(codes):
        responses[str(code)] = {**_ERROR, "description": _ERRORS[code]}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        schema = _ref(body) if isinstance(body, str) else body
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str, description: str, max_length: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


# since/until of /admin/costs: what Operator._query_time parses
QUERY_TIME = {"anyOf": [
    {"type": "string", "pattern": EPOCH_PATTERN, "description": "Epoch seconds."},
    {"type": "string", "pattern": "^20[0-9]{2}-", "anyOf": [{"format": "date-time"}, {"format": "date"}],
     "description": "RFC 3339 date-time or date, in the years 2000 to 2099."},
    {"type": "string", "pattern": DURATION_PATTERN, "description": "A duration before now, e.g. `1h`."},
]}


_NULL = {"type": "null"}
Pools = tuple[tuple[str, int], ...]          # (name, capacity.max) of each pool, by name


def _count(maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": maximum}


def scale_request(base: dict[str, Any], capacity: int) -> dict[str, Any]:
    """ScaleRequest for a pool with this capacity.max: counts up to it, and `max >= min` as one
    branch per value of `min` (JSON Schema cannot compare two fields; it can list the pairs)."""
    schema = copy.deepcopy(base)
    for key in ("pin", "min", "max"):
        prop = schema["properties"][key]
        prop["anyOf"] = [_count(capacity), _NULL]
        prop["description"] = prop["description"].replace("the pool's capacity.max", f"{capacity}, capacity.max")
    count = _count(capacity)
    schema["oneOf"] = [
        {"required": ["pin"], "properties": {"pin": count, "min": _NULL, "max": _NULL}},
        {"properties": {"pin": _NULL}, "anyOf": [
            {"required": ["min"], "properties": {"min": count, "max": _NULL}},
            {"required": ["max"], "properties": {"max": count, "min": _NULL}},
            *({"required": ["min", "max"], "properties": {"min": {"const": low}, "max": {**count, "minimum": low}}}
              for low in range(capacity + 1))]},
    ]
    schema["description"] = (f"`pin`, or `min` and/or `max` (max >= min), at most {capacity} (this pool's "
                             "capacity.max), for `duration`, with a reason.")
    return schema


def event_spec(base: dict[str, Any], pools: Pools | None) -> dict[str, Any]:
    """EventSpec as documented: `start` + `duration` (the window's length bounds what JSON Schema
    can bound; `end` after `start` it cannot), and a pin on one of this instance's pools at most
    its capacity.max."""
    schema = copy.deepcopy(base)
    del schema["properties"]["end"]
    duration = schema["properties"]["duration"]
    duration["anyOf"] = [branch for branch in duration["anyOf"] if branch != _NULL]
    duration.pop("default", None)
    duration["description"] = duration["description"].replace(" Give `end` or `duration`.", " Required.")
    schema["required"] = [*schema["required"][:3], "duration", *schema["required"][3:]]
    schema["allOf"] = [rule for rule in schema["allOf"] if "end" not in str(rule.get("oneOf", ""))]
    schema["description"] += (" The API also takes `end` (RFC 3339, after start, at most 366d later) instead of "
                              "`duration`, as events.yaml does.")
    if pools:
        names = [name for name, _ in pools]
        scope = schema["properties"]["scope"] = copy.deepcopy(schema["properties"]["scope"])
        scope.pop("$ref", None)
        scope["allOf"] = [_ref("EventScope"), {"properties": {"pool": {"anyOf": [{"enum": names}, _NULL]}}}]
        scope["description"] = scope.get("description", "") + " A pool scope names one of: " + ", ".join(names) + "."
        schema["allOf"].append({"anyOf": [
            {"properties": {"pin": _NULL}},
            {"properties": {"scope": {"properties": {"pool": {"not": {"enum": names}}}}}},
            *({"properties": {"scope": {"required": ["pool"], "properties": {"pool": {"const": name}}},
                              "pin": {"anyOf": [_count(capacity), _NULL]}}} for name, capacity in pools)]})
        schema["properties"]["pin"]["description"] += " Pools here: " + ", ".join(
            f"{name} at most {capacity}" for name, capacity in pools) + "."
    return schema


def event_replacement(spec: dict[str, Any]) -> dict[str, Any]:
    """The body of PUT /admin/events/{name}: an EventSpec without `name`, which the path gives."""
    schema = copy.deepcopy(spec)
    del schema["properties"]["name"]
    schema["required"] = [key for key in schema["required"] if key != "name"]
    schema["title"] = "EventReplacement"
    schema["description"] = "An event, as EventSpec, without `name`: the path names it. " + schema["description"]
    return schema


def _hours(low: int, high: int) -> str:
    """Regex for the two-digit hours from low to high (0 <= low <= high <= 23)."""
    return int_range_pattern(low, high) if low >= 10 else "|".join(
        [f"0{int_range_pattern(low, min(high, 9))}"] + ([int_range_pattern(10, high)] if high >= 10 else []))


@lru_cache(maxsize=1)
def window_order() -> list[dict[str, Any]]:
    """A profile window's `end` after its `start`, as JSON Schema can say it: one branch per start
    hour for an end in a later hour, and one per start minute for an end later in the same hour
    (24 + 24 * 59 branches; an exact rule over two fields is a list of pairs)."""
    branches: list[dict[str, Any]] = []
    for hour in range(24):
        later = f"(?:{_hours(hour + 1, 23)}):[0-5][0-9]|24:00" if hour < 23 else "24:00"
        branches.append({"properties": {"start": {"pattern": f"^{hour:02d}:[0-5][0-9]$"},
                                        "end": {"pattern": f"^(?:{later})$"}}})
    for hour in range(24):
        for minute in range(59):
            tens, units = divmod(minute + 1, 10)
            later = f"{tens}[{units}-9]" + (f"|[{tens + 1}-5][0-9]" if tens < 5 else "")
            branches.append({"properties": {"start": {"const": f"{hour:02d}:{minute:02d}"},
                                            "end": {"pattern": f"^{hour:02d}:(?:{later})$"}}})
    return branches


@lru_cache(maxsize=16)
def openapi_document(auth: bool = False, pools: Pools | None = None) -> dict[str, Any]:
    """The document for a server that requires the admin token (`auth`) or does not, with the
    pools it has (`pools`, (name, capacity.max) pairs; None: the generic shape, any pool name)."""
    schemas: dict[str, Any] = {"Error": {"type": "object", "required": ["error"],
                                         "properties": {"error": {"type": "string"}, "key": {"type": "string"}}}}
    for model in (EventSpec, SourceUpdate, ScaleRequest):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["EventSpec"] = event_spec(schemas["EventSpec"], pools)
    schemas["EventReplacement"] = event_replacement(schemas["EventSpec"])
    schemas["ProfileWindow"]["anyOf"] = window_order()
    pool = _path_param("name", "Pool name, as in pools.yaml.")
    if pools is not None:
        pool["schema"] = {"type": "string", "enum": [name for name, _ in pools]}
    event = _path_param("name", "Event name.", MAX_NAME)
    source = _path_param("id", "Source id.", MAX_NAME)
    text = lambda media: {"description": "OK", "content": {media: {"schema": {"type": "string"}}}}  # noqa: E731
    costs_ok = {"description": "OK: JSON (`since`/`until` ISO 8601 UTC), or CSV with `format=csv` or `Accept: text/csv`: columns pool,source,predictive,requests,share,shared_s,premium_s,total_s,row_kind,tier,seconds; row_kind source, unattributed (total_s) or tier (tier, seconds)",
                "content": {"application/json": {"schema": _OBJECT}, "text/csv": {"schema": {"type": "string"}}}}
    op = lambda *args, **kwargs: _op(*args, auth=auth, **kwargs)  # noqa: E731
    scale_summary = "Pin or bound desired ready members for a while, with a reason"
    if pools is None:
        scale_paths = {"/admin/pools/{name}/scale": {
            "post": op(scale_summary + "; counts above the pool's capacity.max are refused", _json(_OBJECT),
                       body="ScaleRequest", params=[pool]),
            "delete": op("Clear the override", _json(_OBJECT), params=[pool])}}
    else:     # one path per pool, each with its own capacity.max (404 only if a reload removed it)
        scale_paths = {f"/admin/pools/{quote(name, safe='')}/scale": {
            "post": op(f"{scale_summary}; pool {name}, capacity.max {capacity}", _json(_OBJECT),
                       body=scale_request(schemas["ScaleRequest"], capacity), errors=(404,)),
            "delete": op(f"Clear the override of pool {name}", _json(_OBJECT), errors=(404,))}
            for name, capacity in pools}
    # POST only adds: an existing name is a 409 that says to PUT /admin/events/{name}
    add_event = op("Add an event (201); 400 when the scope names no pool here; 409 when an event of that name "
                   "exists (PUT /admin/events/{name} replaces it) or past 1000 events from the API",
                   _json(_OBJECT), body="EventSpec", created=True, errors=(409,))
    del add_event["responses"]["200"]
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "warmfront admin API", "version": "1",
                 "description": "Bodies are UTF-8 application/json, at most 64 KiB, nested at most 32 deep, and "
                                "typed strictly: `false` is not a number, `\"2\"` is not 2 and `2.5` is not a count."},
        "components": {"schemas": schemas},
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": _json(_OBJECT)}}},
            "/metrics": {"get": op("Prometheus metrics", text("text/plain"))},
            "/admin/status": {"get": op("Pools, members, desired vs actual, forecasts, sources", _json(_OBJECT))},
            "/admin/dashboard": {"get": op("HTML dashboard", text("text/html"))},
            "/admin/openapi.json": {"get": op("This document", _json(_OBJECT))},
            "/admin/events": {
                "get": op("List events (events.yaml and the API); `skipped` lists stored events that no longer "
                          "validate", _json(_OBJECT)),
                "post": add_event,
            },
            "/admin/events/{name}": {
                "get": op("One event", _json(_OBJECT), params=[event]),
                "put": op("Add (201) or replace (200) the event the path names; the body has no `name`. 400 "
                          "when the scope names no pool here; 409 past 1000 events from the API",
                          _json(_OBJECT, "Replaced"), body="EventReplacement", params=[event], created=True,
                          errors=(409,)),
                "delete": op("Remove an event", _json(_OBJECT), params=[event]),
            },
            "/admin/sources": {"get": op("Sources with their controls and traffic", _json(_OBJECT))},
            "/admin/sources/{id}": {
                "get": op("One source's controls", _json(_OBJECT), params=[source], errors=(400,)),
                "put": op("Set predictive opt-in, workload profile, latency sensitivity; 409 past 10000 sources",
                          _json(_OBJECT), body="SourceUpdate", params=[source], errors=(409,)),
            },
            "/admin/costs": {"get": op("Container-seconds per pool and tier, attributed to sources", costs_ok,
                                       errors=(400,), params=[
                _query("since", "Epoch seconds, RFC 3339 or a duration before now (`1h`); clamped to "
                                "2000-01-01. Default 24h ago.", QUERY_TIME),
                _query("until", "Same forms as since; clamped to now. An empty window (until <= since) has no "
                                "costs. Default now.", QUERY_TIME),
                _query("format", "json (default) or csv; `Accept: text/csv` also gives csv.",
                       {"type": "string", "enum": ["json", "csv"]})])},
            **scale_paths,
            "/admin/pools/{name}/members/{id}/drain": {
                "post": op("Drain one ready member (its place is refilled)", _json(_OBJECT), errors=(409,),
                           params=[pool, _path_param("id", "Member id.")]),
            },
            "/admin/reload": {
                "post": op("Re-read the YAML; 400 with file:line: key when invalid (the running config stays)",
                           _json(_OBJECT), errors=(400, 409)),
            },
        },
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"},
                                                "basic": {"type": "http", "scheme": "basic"}}
        doc["security"] = [{"bearer": []}, {"basic": []}]
    return doc
