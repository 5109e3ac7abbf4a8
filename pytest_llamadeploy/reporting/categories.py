"""Failure categories: the message prefixes the gate core raises with, and the rules Allure groups by.

The core starts every gate failure message with one of the prefixes below, so a
reviewer finds "threshold breached" failures in one place of the report whatever
the exception type was. Allure 3 reads the rules from allurerc.json (see cli.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THRESHOLD_BREACHED = "threshold breached:"
ROLLBACK_TRIGGERED = "rollback triggered:"
PROBE_FAILED = "probe failed:"
PROVIDER_ERROR = "provider error:"
INCONCLUSIVE = "inconclusive:"

PREFIXES: tuple[str, ...] = (THRESHOLD_BREACHED, ROLLBACK_TRIGGERED, PROBE_FAILED, PROVIDER_ERROR, INCONCLUSIVE)

# pytest and allure-pytest put the exception type in front of the message
# ("Failed: ...", "AssertionError: ..."); the rule must see through that.
_EXC_TYPE = r"(?:[A-Za-z_][\w.]*: )?"


@dataclass(frozen=True)
class Category:
    name: str
    prefix: str
    statuses: tuple[str, ...]
    description: str

    @property
    def message_regex(self) -> str:
        """A regex valid in both Python and JavaScript (Allure 3 builds it with ``new RegExp``)."""
        return "^" + _EXC_TYPE + re.escape(self.prefix).replace("\\ ", " ")


CATEGORIES: tuple[Category, ...] = (
    Category("Threshold breached", THRESHOLD_BREACHED, ("failed", "broken"),
             "A metric crossed its policy threshold during the bake"),
    Category("Rollback triggered", ROLLBACK_TRIGGERED, ("failed", "broken"),
             "The stage rolled traffic back to the previous version"),
    Category("Probe failed", PROBE_FAILED, ("failed", "broken"),
             "A version-targeted HTTP or WebSocket probe got a wrong answer"),
    Category("Provider or infrastructure error", PROVIDER_ERROR, ("failed", "broken"),
             "AWS, the sandbox or a dependency failed: not a verdict on the release"),
    Category("Inconclusive", INCONCLUSIVE, ("failed", "broken", "skipped"),
             "Not enough data to decide (missing datapoints, too little traffic)"),
)


def classify(message: str | None) -> Category | None:
    """The category a failure message falls into, or None when it has no known prefix."""
    if not message:
        return None
    for category in CATEGORIES:
        if re.match(category.message_regex, message):
            return category
    return None


def allure_rules() -> list[dict[str, object]]:
    """Category rules in Allure 3's canonical form (``allurerc.json`` key ``categories.rules``)."""
    return [
        {
            "id": category.name.lower().replace(" ", "-"),
            "name": category.name,
            "matchers": {"statuses": list(category.statuses), "message": category.message_regex},
            "groupByMessage": True,
            "expand": True,
        }
        for category in CATEGORIES
    ]


def allure2_categories() -> list[dict[str, object]]:
    """The same rules as Allure 2's ``categories.json`` (for people who still build with Allure 2)."""
    return [
        {"name": c.name, "matchedStatuses": list(c.statuses), "messageRegex": c.message_regex + "[\\s\\S]*"}
        for c in CATEGORIES
    ]


def _fmt(value: object, unit: str) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    return f"{value}{unit}" if unit else str(value)


def threshold_message(*, metric: str, value: object, threshold: object, op: str = ">", window: str = "",
                      version: str = "", unit: str = "", prefix: str = THRESHOLD_BREACHED) -> str:
    """The one-line failure message a reviewer reads: metric, value, threshold, window, version."""
    parts = [f"{prefix} {metric} = {_fmt(value, unit)} {op} threshold {_fmt(threshold, unit)}"]
    if window:
        parts.append(f"over {window}")
    if version:
        parts.append(f"on version {version}")
    return " ".join(parts)
