"""Parsing of the human units policies are written in: durations, rates, thresholds.

Policies are read by people at 3 a.m., so they say ``5m`` and ``1%``; the code
works in seconds and fractions. Each parser raises ``ValueError`` with the
accepted forms, which pydantic turns into an error naming the key and value.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``'5m'`` -> 300.0 seconds; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 10s, 5m, 24h, 200ms")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is negative; a duration is >= 0")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _SECONDS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration; write e.g. 10s, 5m, 24h, 200ms")


def format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1 and seconds:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def parse_rate(value: object) -> float:
    """``'1%'`` -> 0.01; a bare number in [0, 1] is already a fraction."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a rate; write e.g. 1%, 0.1%, 0.05")
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            fraction = float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"{value!r} is not a rate; write e.g. 1%, 0.1%, 0.05") from None
    elif isinstance(value, (int, float)) or isinstance(value, str):
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate; write e.g. 1%, 0.1%, 0.05") from None
    else:
        raise ValueError(f"{value!r} is not a rate; write e.g. 1%, 0.1%, 0.05")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{value!r} is outside 0%..100%")
    return fraction


def parse_threshold(value: object) -> float:
    """A threshold in the signal's own unit: ``'1%'`` -> 0.01, ``'500ms'`` -> 500 (ms), ``10`` -> 10.

    Latencies are compared in milliseconds because that is CloudWatch's unit
    for Lambda Duration and API Gateway Latency.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a threshold; write e.g. 1%, 500ms, 10")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            return parse_rate(text)
        if text.endswith("ms") or text.endswith("s") and not text.endswith("ms"):
            try:
                return parse_duration(text) * 1000.0
            except ValueError:
                pass
        try:
            return float(text)
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a threshold; write e.g. 1%, 500ms, 10")


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
Rate = Annotated[float, BeforeValidator(parse_rate)]
Threshold = Annotated[float, BeforeValidator(parse_threshold)]
