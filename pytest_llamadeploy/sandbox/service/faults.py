"""Fault knobs of the reference service: the single source of their names, kinds and defaults.

The service, its admin endpoint and the CLI (`llamadeploy sandbox fault`) all
validate through this module, so a knob is added or changed in one place.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["rate", "ms", "bool"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_ALLOWED = {
    "rate": "a share between 0 and 1 (e.g. 0.3 or 30%)",
    "ms": "milliseconds, a number >= 0 (e.g. 250)",
    "bool": "true or false",
}


@dataclass(frozen=True)
class Knob:
    name: str
    kind: Kind
    help: str

    @property
    def default(self) -> float | bool:
        return False if self.kind == "bool" else 0.0

    @property
    def allowed(self) -> str:
        return _ALLOWED[self.kind]


KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("error_rate", "rate", "share of HTTP requests (not /health, /_sandbox) answered 500 by the handler "
                                    "(a handled error: API Gateway counts a 5XXError, Lambda no Error)"),
        Knob("unhandled_error_rate", "rate", "share of HTTP requests (not /health, /_sandbox) whose handler raises "
                                              "(Lambda counts an Error; API Gateway answers 502)"),
        Knob("latency_ms", "ms", "delay added to every HTTP response"),
        Knob("ws_connect_error_rate", "rate", "share of WebSocket handshakes refused (503)"),
        Knob("throttle_rate", "rate", "share of HTTP requests (not /health, /_sandbox) Lambda refuses for "
                                       "concurrency (a Throttle; the function never runs; API Gateway answers 500)"),
        Knob("cache_bypass", "bool", "queries always read PostgreSQL and count as cache misses"),
        Knob("slow_query_ms", "ms", "pg_sleep added before each database query"),
        Knob("event_drop_rate", "rate", "share of events not delivered to this release's WebSocket clients"),
        Knob("crash", "bool", "/health answers 503"),
    )
}


def _bad(name: str, value: Any, why: str = "") -> ValueError:
    knob = KNOBS[name]
    return ValueError(f"fault {name}={value!r}: {why + '; ' if why else ''}{name} takes {knob.allowed}")


def coerce(name: str, value: Any) -> float | bool:
    """One knob's value, validated; raises ValueError naming the knob and what it takes."""
    if name not in KNOBS:
        raise ValueError(f"unknown fault knob {name!r}; knobs: {', '.join(KNOBS)}")
    kind = KNOBS[name].kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(name, value)
    if isinstance(value, bool):
        raise _bad(name, value)
    if isinstance(value, str):
        text = value.strip().lower()
        percent = kind == "rate" and text.endswith("%")
        text = text.removesuffix("%") if percent else text.removesuffix("ms")
        try:
            number = float(text) / (100.0 if percent else 1.0)
        except ValueError:
            raise _bad(name, value, "not a number") from None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        raise _bad(name, value)
    if not math.isfinite(number) or number < 0:
        raise _bad(name, value, "out of range")
    if kind == "rate" and number > 1:
        raise _bad(name, value, "out of range")
    return number


def validate_faults(values: Mapping[str, Any]) -> dict[str, float | bool]:
    """Validate a {knob: value} mapping (JSON body of the admin endpoint)."""
    if not isinstance(values, Mapping):
        raise ValueError(f"faults must be a JSON object of knob: value, got {type(values).__name__}; knobs: {', '.join(KNOBS)}")
    return {name: coerce(name, value) for name, value in values.items()}


def parse_faults(items: Iterable[str]) -> dict[str, float | bool]:
    """Parse CLI ``KNOB=VALUE`` items; raises ValueError naming the knob and its allowed values."""
    parsed: dict[str, float | bool] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"fault {item!r} is not KNOB=VALUE; knobs: {', '.join(KNOBS)}")
        parsed[name] = coerce(name, value)
    return parsed


def defaults() -> dict[str, float | bool]:
    return {name: knob.default for name, knob in KNOBS.items()}


class Faults:
    """The live faults of one service process (changed by the admin endpoint)."""

    def __init__(self, initial: Mapping[str, float | bool] | None = None, rng: random.Random | None = None):
        self.values = defaults()
        self.values.update(initial or {})
        self._rng = rng or random.Random()

    def update(self, values: Mapping[str, Any]) -> dict[str, float | bool]:
        self.values.update(validate_faults(values))
        return dict(self.values)

    def reset(self) -> dict[str, float | bool]:
        self.values = defaults()
        return dict(self.values)

    def roll(self, name: str) -> bool:
        """True with the probability of rate knob ``name``."""
        rate = float(self.values[name])
        return rate > 0 and self._rng.random() < rate

    def ms(self, name: str) -> float:
        return float(self.values[name])

    def on(self, name: str) -> bool:
        return bool(self.values[name])
