"""The metrics a CloudWatch dashboard shows, read from its JSON body.

Handles the console's shorthand: ``"."`` repeats the value at the same position
of the previous row; a row starting with ``"..."`` repeats the previous row and
replaces its last values with the ones given (``["...", "i-2"]`` after
``["AWS/EC2", "CPUUtilization", "InstanceId", "i-1"]`` is instance i-2); a
trailing ``{...}`` holds rendering options such as ``stat`` (the widget's ``stat``
is the default).
"""

from __future__ import annotations

from typing import Any

from .query import SeriesSpec


class DashboardError(ValueError):
    pass


def dashboard_series(name: str, body: dict[str, Any], period: int) -> list[SeriesSpec]:
    """Every metric row of every metric widget, as a SeriesSpec with the given period."""
    specs: list[SeriesSpec] = []
    for w, widget in enumerate(body.get("widgets", [])):
        if widget.get("type") != "metric":
            continue
        props = widget.get("properties", {})
        default_stat = props.get("stat", "Average")
        previous: list[Any] = []
        for r, row in enumerate(props.get("metrics", [])):
            options = row[-1] if row and isinstance(row[-1], dict) else {}
            parts = list(row[:-1] if options else row)
            if "expression" in options:
                continue  # metric math: its inputs are other rows
            if parts and parts[0] == "...":
                tail = parts[1:]
                if not previous or len(tail) > len(previous):
                    raise DashboardError(f"dashboard {name}: widget {w} metric row {r} {row!r} repeats a previous "
                                         "row with '...', but there is none as long")
                parts = previous[:len(previous) - len(tail)] + tail
            if "..." in parts:
                raise DashboardError(f"dashboard {name}: widget {w} metric row {r} {row!r}: '...' only starts a row")
            if any(p == "." for p in parts[len(previous):]):
                raise DashboardError(f"dashboard {name}: widget {w} metric row {r} {row!r}: '.' at a position the "
                                     "previous row does not have")
            resolved = [previous[i] if p == "." else p for i, p in enumerate(parts)]
            if len(resolved) < 2 or len(resolved) % 2 != 0:
                raise DashboardError(
                    f"dashboard {name}: widget {w} metric row {r} {row!r} is not "
                    "[namespace, metric, dim, value, ...]")
            previous = resolved
            dims = tuple((str(resolved[i]), str(resolved[i + 1])) for i in range(2, len(resolved), 2))
            specs.append(SeriesSpec(str(resolved[0]), str(resolved[1]), dims, options.get("stat", default_stat), period))
    return specs
