"""Parsing of the human units policies are written in: durations, rates, thresholds.

Policies are read by people at 3 a.m., so they say ``5m`` and ``1%``; the code
works in seconds and fractions. Each parser raises ``ValueError`` with the
accepted forms, which pydantic turns into an error naming the key and value.

Every number is finite and bounded, in every environment: YAML spells NaN and
infinity ``.nan`` and ``.inf``, and a NaN threshold never fails a comparison
(``nan > 0.05`` is False), a ``bake: .nan`` never ends, and ``timeout: 1e308``
fails only after the lock is taken. ``duration_within`` and ``number_within``
bound the policy models' fields; their errors name the allowed range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
#: No step of a deployment (bake, timeout, grace, lease, retention) is longer than this.
MAX_DURATION = 30 * 86400.0
#: Thresholds are rates, counts or milliseconds: none is negative, none is this large.
MAX_THRESHOLD = 1e9


def _finite(value: float, original: object, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{original!r} is not a finite {what}: a NaN never fails a comparison "
                         "and an infinite wait never ends")
    return value


def parse_duration(value: object) -> float:
    """``'5m'`` -> 300.0 seconds; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 10s, 5m, 24h, 200ms")
    seconds: float | None = None
    if isinstance(value, (int, float)):
        seconds = _finite(float(value), value, "duration")
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m:
            seconds = _finite(float(m.group(1)) * _SECONDS[m.group(2)], value, "duration")
    if seconds is None:
        raise ValueError(f"{value!r} is not a duration; write e.g. 10s, 5m, 24h, 200ms")
    if seconds < 0:
        raise ValueError(f"{value!r} is negative; a duration is >= 0")
    if seconds > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than {format_duration(MAX_DURATION)}, the longest duration a policy may hold")
    return seconds


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return f"{seconds}s"
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
    if not 0.0 <= fraction <= 1.0:  # also refuses NaN, for which every comparison is False
        raise ValueError(f"{value!r} is outside 0%..100%")
    return fraction


def parse_threshold(value: object) -> float:
    """A threshold in the signal's own unit: ``'1%'`` -> 0.01, ``'500ms'`` -> 500 (ms), ``10`` -> 10.

    Latencies are compared in milliseconds because that is CloudWatch's unit
    for Lambda Duration and API Gateway Latency.
    """
    number: float | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            return parse_rate(text)
        if text.endswith("ms") or text.endswith("s") and not text.endswith("ms"):
            try:
                return parse_duration(text) * 1000.0
            except ValueError:
                pass
        try:
            number = float(text)
        except ValueError:
            pass
    if number is None:
        raise ValueError(f"{value!r} is not a threshold; write e.g. 1%, 500ms, 10")
    _finite(number, value, "threshold")
    if not 0.0 <= number <= MAX_THRESHOLD:
        raise ValueError(f"{value!r} is outside 0..{MAX_THRESHOLD:g}: thresholds are rates, counts or milliseconds")
    return number


def _range_check(lo: float, hi: float, *, above: bool, show: Callable[[float], str]) -> Callable[[float], float]:
    def check(number: float) -> float:
        too_low = number <= lo if above else number < lo
        if too_low or number > hi:
            low = f"more than {show(lo)}" if above else show(lo)
            raise ValueError(f"{show(number)} is outside the allowed range: {low} .. {show(hi)}")
        return number
    return check


def duration_within(lo: float, hi: float, *, above: bool = False) -> AfterValidator:
    """For ``Annotated[Duration, duration_within(1, 300)]``: seconds in [lo, hi] (``above``: lo excluded)."""
    return AfterValidator(_range_check(lo, hi, above=above, show=format_duration))


def number_within(lo: float, hi: float, *, above: bool = False) -> BeforeValidator:
    """For ``Annotated[int, number_within(1, 100)]``: finite, in [lo, hi] (``above``: lo excluded).

    Checked before pydantic's own conversion, so that ``1e308`` for a count is
    reported as out of range rather than as an integer overflow.
    """
    check = _range_check(lo, hi, above=above, show=lambda n: f"{n:g}")

    def validate(value: object) -> object:
        number: float | None = None
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            number = float(value) if abs(value) < 1e300 else math.copysign(1e300, value)
        elif isinstance(value, float):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return value  # pydantic says which type it wanted
        if number is not None:
            check(_finite(number, value, "number"))
        return value
    return BeforeValidator(validate)


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
Rate = Annotated[float, BeforeValidator(parse_rate)]
Threshold = Annotated[float, BeforeValidator(parse_threshold)]
