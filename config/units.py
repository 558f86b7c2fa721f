"""Durations, sizes and CPU amounts as users write them in YAML: `30s`, `250ms`, `256m`, `0.5`.

The `parse_*` functions are plain (usable for CLI flags too) and raise ValueError with a message
meant for the user. `Duration`, `ByteSize` and `Cpus` wire them into pydantic models: after
validation the field holds float seconds, int bytes or float CPUs.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# One or more number+unit parts, Go style: `1h30m`, `1.5s`, `250ms`.
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}(?:ms|s|m|h|d))+\s*$|^\s*{_NUMBER}\s*$"

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
# k, kb and kib all mean 1024: memory limits are what users size here, and Docker reads `k` that way.
_SIZE = re.compile(rf"({_NUMBER})\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
SIZE_PATTERN = rf"^\s*{_NUMBER}\s*(?:[kKmMgGtT](?:[iI]?[bB])?|[bB])?\s*$"

_CPUS = re.compile(rf"({_NUMBER})(m?)")
CPUS_PATTERN = rf"^\s*{_NUMBER}m?\s*$"


def _plain_number(value: Any, what: str) -> float | None:
    """A YAML number as a finite float >= 0, or None when `value` is a string to parse further."""
    if isinstance(value, str):
        return None
    # bool is an int subclass; `true` as a duration is a typo, not 1 second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a {what} (got {type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite {what}")
    if value < 0:
        raise ValueError("must be >= 0")
    return float(value)


def parse_duration(value: Any) -> float:
    """`30s`, `250ms`, `5m`, `1h`, `2d`, `1h30m`, `1.5s`, or a plain number of seconds -> seconds."""
    number = _plain_number(value, "duration")
    if number is not None:
        return number
    text = value.strip()
    if re.fullmatch(_NUMBER, text):
        return float(text)
    if text and re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", text):
        return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    raise ValueError(f"must be a duration like 30s, 250ms, 5m, 1h or 2d (got {value!r})")


def parse_size(value: Any) -> int:
    """`512`, `64k`, `256m`, `1g`, `1.5G`, `10MiB`, `1GB` -> bytes; k/m/g/t are powers of 1024."""
    number = _plain_number(value, "size")
    if number is not None:
        if not number.is_integer():
            raise ValueError(f"must be a whole number of bytes (got {value!r})")
        return int(number)
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"must be a size like 512, 64k, 256m or 1g (got {value!r})")
    digits, unit = match.groups()
    return round(float(digits) * _SIZE_UNITS[(unit or "").lower()])


def parse_cpus(value: Any) -> float:
    """`0.5`, `2`, or millicores `500m` -> CPUs (float, > 0)."""
    number = _plain_number(value, "CPU amount")
    if number is None:
        match = _CPUS.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"must be a CPU amount like 0.5, 2 or 500m (got {value!r})")
        digits, milli = match.groups()
        number = float(digits) / (1000 if milli else 1)
    if number <= 0:
        raise ValueError("must be > 0")
    return number


def _unit_schema(pattern: str, examples: list[Any]) -> WithJsonSchema:
    # The validated Python type is a number, but YAML authors write strings; the schema shows both.
    return WithJsonSchema({
        "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": pattern}],
        "examples": examples,
    })


Duration = Annotated[float, BeforeValidator(parse_duration),
                     _unit_schema(DURATION_PATTERN, ["250ms", "30s", "5m", "1h", 2.5])]
ByteSize = Annotated[int, BeforeValidator(parse_size),
                     _unit_schema(SIZE_PATTERN, ["64k", "256m", "1g", "10MiB", 4096])]
Cpus = Annotated[float, BeforeValidator(parse_cpus),
                 _unit_schema(CPUS_PATTERN, [0.5, 2, "500m"])]
