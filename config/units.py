"""Durations, sizes and CPU amounts as users write them in YAML: `30s`, `250ms`, `256m`, `0.5`.

The `parse_*` functions are plain (usable for CLI flags too) and raise ValueError with a message
meant for the user. `Duration`, `ByteSize` and `Cpus` wire them into pydantic models: after
validation the field holds float seconds, int bytes or float CPUs.

Every duration is at most `MAX_DURATION`: a longer one is a typo (`100000000d`), and past it the
arithmetic done on durations (now + duration, as a date) stops being representable.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo, WithJsonSchema

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"

MAX_DURATION = 3650 * 86400.0     # ten years

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# One or more number+unit parts, Go style: `1h30m`, `1.5s`, `250ms`.
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}(?:ms|s|m|h|d))+\s*$|^\s*{_NUMBER}\s*$"
EPOCH_PATTERN = r"^[0-9]+(?:\.[0-9]+)?$"     # seconds since 1970, as the admin API's time queries take them

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
    try:
        finite = math.isfinite(value)
    except OverflowError:            # an int past float's range (JSON `1` and 400 zeros)
        finite = False
    if not finite:
        raise ValueError(f"must be a finite {what}")
    if value < 0:
        raise ValueError("must be >= 0")
    return float(value)


def parse_duration(value: Any) -> float:
    """`30s`, `250ms`, `5m`, `1h`, `2d`, `1h30m`, `1.5s`, or a plain number of seconds -> seconds,
    at most `MAX_DURATION`."""
    seconds = _plain_number(value, "duration")
    if seconds is None:
        text = value.strip()
        if re.fullmatch(_NUMBER, text):
            seconds = float(text)
        elif text and re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", text):
            seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"must be a duration like 30s, 250ms, 5m, 1h or 2d (got {_short(value)})")
    if not seconds <= MAX_DURATION:       # also catches inf from a thousand-digit number
        raise ValueError(f"must be at most {format_duration(MAX_DURATION)} (got {_short(value)})")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling in one unit: 86400 -> `1d`, 90 -> `90s`, 0.25 -> `250ms`."""
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / _DURATION_UNITS[unit]
        if count >= 1 and count.is_integer():
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


# Validation context the admin API passes (`model_validate(..., context=API_CONTEXT)`): a duration
# string must then be in the form the OpenAPI document gives (`duration_pattern`), not any form
# YAML takes. The document can bound that form; it cannot bound `1.5h` or `0.0001s`.
API_CONTEXT = {"api": True}
_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
# After a first part, each smaller unit within its usual range: `1h30m`, `2d12h`, `1m05s`, `1s250ms`.
_PART_IN_RANGE = {"h": r"(?:[01]?[0-9]|2[0-3])h", "m": r"[0-5]?[0-9]m", "s": r"[0-5]?[0-9]s", "ms": r"[0-9]{1,3}ms"}


def _digits_range(low: str, high: str) -> str:
    """Regex for the digit strings of one length from `low` to `high`."""
    if low == high:
        return low
    if len(low) == 1:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return low[0] + _digits_range(low[1:], high[1:])
    rest = len(low) - 1
    any_digits = "[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return _digits_range(low[0], high[0]) + any_digits
    alternatives = [low[0] + _digits_range(low[1:], "9" * rest)]
    if int(low[0]) + 1 <= int(high[0]) - 1:
        alternatives.append(_digits_range(str(int(low[0]) + 1), str(int(high[0]) - 1)) + any_digits)
    alternatives.append(high[0] + _digits_range("0" * rest, high[1:]))
    return "(?:" + "|".join(alternatives) + ")"


def int_range_pattern(low: int, high: int) -> str:
    """Regex (no anchors) for the decimal integers from `low` to `high`, without leading zeros."""
    assert 0 <= low <= high
    alternatives = []
    for length in range(len(str(low)), len(str(high)) + 1):
        a = max(low, 10 ** (length - 1) if length > 1 else 0)
        b = min(high, 10 ** length - 1)
        if a <= b:
            alternatives.append(_digits_range(str(a), str(b)))
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def duration_pattern(minimum: float, maximum: float) -> str:
    """The duration strings the admin API takes for [minimum, maximum] seconds: a whole count of one
    unit (`90m`), optionally followed by smaller units each in its usual range (`1h30m`, `2d12h`).
    Every string it admits is in range, so JSON Schema bounds it exactly; other spellings of the
    same length (`1.5h`, `5400s`... the latter is admitted when in range) are YAML's."""
    low_ms, high_ms = round(minimum * 1000), round(maximum * 1000)
    assert low_ms / 1000 == minimum and high_ms / 1000 == maximum, "bounds are whole milliseconds"
    alternatives = []
    units = list(_UNIT_MS)
    for index, unit in enumerate(units):
        top, low = high_ms // _UNIT_MS[unit], -(-low_ms // _UNIT_MS[unit])
        if top < low:
            continue
        tail = "".join(f"(?:{_PART_IN_RANGE[u]})?" for u in units[index + 1:])
        # A tail adds less than one `unit`, so a count below `top` leaves room for any tail.
        if tail and low <= top - 1:
            alternatives.append(f"{int_range_pattern(low, top - 1)}{unit}{tail}")
            alternatives.append(f"{top}{unit}")
        else:
            alternatives.append(f"{int_range_pattern(low, top)}{unit}")
    return "^(?:" + "|".join(alternatives) + ")$"


def bounded_duration(*, maximum: float, minimum: float = 0.0) -> Any:
    """A `Duration` in [minimum, maximum] seconds, with the bounds in its JSON Schema: seconds as a
    number, or a string matching `duration_pattern`. Under API_CONTEXT that is exactly what is
    accepted (what the admin API documents is what it accepts); YAML may spell it any way."""
    pattern = duration_pattern(minimum, maximum)

    def parse(value: Any, info: ValidationInfo) -> float:
        seconds = parse_duration(value)
        in_range = minimum <= seconds <= maximum      # out of range: Field(ge, le) says so, as for numbers
        if (isinstance(value, str) and in_range and (info.context or {}).get("api")
                and not re.fullmatch(pattern, value)):
            raise ValueError(f"must be seconds as a number, or a whole number of one unit optionally followed by "
                             f"smaller ones, like 90m, 1h30m or 2d12h (got {_short(value)})")
        return seconds

    number = {"type": "number", "minimum": minimum, "maximum": maximum}
    string = {"type": "string", "pattern": pattern,
              "description": f"From {format_duration(minimum) if minimum else '0s'} to {format_duration(maximum)}: "
                             "a whole number of ms, s, m, h or d, optionally followed by smaller units in their "
                             "usual range (`1h30m`)."}
    return Annotated[float, BeforeValidator(parse), Field(ge=minimum, le=maximum),
                     WithJsonSchema({"anyOf": [number, string], "examples": ["30s", "5m", "1h"]})]


ByteSize = Annotated[int, BeforeValidator(parse_size),
                     _unit_schema(SIZE_PATTERN, ["64k", "256m", "1g", "10MiB", 4096])]
Cpus = Annotated[float, BeforeValidator(parse_cpus),
                 _unit_schema(CPUS_PATTERN, [0.5, 2, "500m"])]
