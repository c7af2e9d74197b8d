"""Human units used everywhere in the policy file: durations, sizes, rates, percentages.

Each parser accepts a number (seconds, bytes, per second) or a string with a unit and
returns a plain float/int, so the rest of the code never sees units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION_UNITS = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
}
_RATE_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h|d)")
_NUMBER_UNIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([A-Za-z]+)\s*$")


def parse_duration(value: object) -> float:
    """``250ms``, ``30s``, ``1m30s``, ``2h`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 30s or 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 250ms, 30s or 5m")
    text = value.strip()
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"{value!r} is not a duration; use a number and a unit: 250ms, 30s, 5m, 1h"
        )
    return total


def parse_size(value: object) -> int:
    """``64KiB``, ``10MB``, ``512`` -> bytes (KiB/MiB/GiB are powers of 1024, KB/MB of 1000)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB or 10MB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _NUMBER_UNIT_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"{value!r} is not a size; use bytes or a unit: 512, 64KiB, 10MiB, 1GB")


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` events per ``period`` seconds."""

    limit: float
    period: float

    @property
    def per_second(self) -> float:
        return self.limit / self.period

    def __str__(self) -> str:
        return f"{self.limit:g}/{self.period:g}s"


def parse_rate(value: object) -> Rate:
    """``100/s``, ``5000/h``, ``10/30s`` -> Rate(limit, period seconds)."""
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        if m and m.group(3).lower() in _RATE_UNITS:
            limit = float(m.group(1))
            multiple = float(m.group(2)) if m.group(2) else 1.0
            period = multiple * _RATE_UNITS[m.group(3).lower()]
            if limit > 0 and period > 0:
                return Rate(limit, period)
    raise ValueError(f"{value!r} is not a rate; use count/unit: 100/s, 5000/h, 10/30s")


def parse_percent(value: object) -> float:
    """``50%`` or a fraction ``0.5`` -> 0.5."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1])
        except ValueError:
            number = -1.0
        if 0.0 <= number <= 100.0:
            return number / 100.0
    elif isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise ValueError(f"{value!r} is not a percentage; use 0%..100% or a fraction 0..1")


def _fmt_seconds(v: float) -> str:
    return f"{v:g}s"


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(us|µs|ms|s|m|h|d)\s*)+$"},
        {"type": "number", "minimum": 0},
    ],
    "description": "a duration: 250ms, 30s, 5m, 1h, or a number of seconds",
}
_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KMG]i?B|[kmg]i?b|[KMGkmg]|[Bb])?$"},
        {"type": "integer", "minimum": 0},
    ],
    "description": "a size: 512, 64KiB, 10MiB, 1GB",
}
_RATE_SCHEMA = {
    "type": "string",
    "pattern": r"^\d+(\.\d+)?\s*/\s*(\d+(\.\d+)?)?\s*[A-Za-z]+$",
    "description": "a rate: 100/s, 5000/h, 10/30s",
}
_PERCENT_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
        {"type": "number", "minimum": 0, "maximum": 1},
    ],
    "description": "a percentage: 50% or 0.5",
}

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(_fmt_seconds, return_type=str),
    WithJsonSchema(_DURATION_SCHEMA),
]
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]
RateValue = Annotated[
    Rate,
    BeforeValidator(parse_rate),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(_RATE_SCHEMA),
]
Percent = Annotated[float, BeforeValidator(parse_percent), WithJsonSchema(_PERCENT_SCHEMA)]
