"""What every operator resource does with a request: read a bounded JSON body, validate it
strictly against the pydantic models, parse times in the query, format times in answers."""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from balancer.operator.server import ApiError
from config.events import FIRST_YEAR, MAX_NAME, parse_time
from config.loader import _format_key, _location, _message
from config.units import API_CONTEXT, DURATION_PATTERN, EPOCH_PATTERN, parse_duration

MAX_BODY = 64 * 1024
MAX_DEPTH = 32                  # JSON nesting; the deepest valid body (a profile window's days) is 4
MAX_API_EVENTS = 1000
MAX_SOURCE_CONTROLS = 10000
FIRST_T = datetime(FIRST_YEAR, 1, 1, tzinfo=timezone.utc).timestamp()



def source_id(request: web.Request) -> str:
    source = request.match_info["id"]
    if len(source) > MAX_NAME:
        raise ApiError(400, f"source id: at most {MAX_NAME} characters (got {len(source)})", key="id")
    return source


async def json_body(request: web.Request) -> Any:
    """The request's JSON body, or an ApiError: 415 unless it says it is JSON (UTF-8), 413 past
    MAX_BODY, 400 when it does not parse, holds NaN/Infinity, or nests deeper than MAX_DEPTH (the
    parser itself would recurse without bound, and a RecursionError is not a client's answer)."""
    if "Content-Type" not in request.headers or not _is_json(request.content_type):
        raise ApiError(415, f"Content-Type must be application/json "
                            f"(got {request.headers.get('Content-Type', 'none')[:60]!r})")
    if (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise ApiError(415, f"JSON must be UTF-8 (got charset {(request.charset or '')[:30]!r})")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    too_deep = ApiError(400, f"body must be JSON nested at most {MAX_DEPTH} deep")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise ApiError(400, f"body must be UTF-8 JSON: {e}") from None
    except ValueError as e:
        raise ApiError(400, f"body must be JSON: {e}") from None
    except RecursionError:
        raise too_deep from None
    if _deeper_than(raw, MAX_DEPTH):
        raise too_deep
    return body


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (content_type.startswith("application/")
                                                   and content_type.endswith("+json"))


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _deeper_than(raw: bytes, limit: int) -> bool:
    """For valid JSON: whether brackets nest deeper than `limit`. Strips strings, keeps only the
    brackets and removes innermost pairs `limit` times — C-speed passes, not a loop per byte
    (the admin API shares the data plane's event loop)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    return bool(brackets)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def validate(model: type[BaseModel], data: Any):
    """Strict: `false` is not 0, `"2"` is not 2 and 2.5 is not a count — the types the document gives;
    and durations in the forms it gives (API_CONTEXT)."""
    try:
        return model.model_validate(data, strict=True, context=API_CONTEXT)
    except ValidationError as err:
        # worded as `warmfront check` words a YAML mistake: the dotted key, then a short message
        detail = err.errors()[0]
        key, message = _format_key(_location(detail)), _message(detail)
        raise ApiError(400, f"{key}: {message}", key=key) from None


def query_time(value: str | None, now: float, default: float, name: str) -> float:
    """Epoch seconds, an RFC 3339 time or date (as events take), or a duration before now (`1h`);
    the grammar openapi.QUERY_TIME documents."""
    if value is None:
        return default
    if re.fullmatch(EPOCH_PATTERN, value):
        return float(value)
    if re.fullmatch(DURATION_PATTERN, value):
        try:
            return now - parse_duration(value)
        except ValueError:
            return -math.inf           # longer ago than any duration: clamped to the first year
    try:
        return parse_time(value).timestamp()
    except ValueError as err:
        raise ApiError(400, f"{name} must be epoch seconds, an ISO 8601 time or a duration like 1h "
                            f"(got {value[:40]!r}: {err})", key=name) from None


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")
