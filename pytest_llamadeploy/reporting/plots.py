"""Per-version metric time series over the bake, as PNG with the threshold drawn."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence


def plot_series(series: Mapping[str, Sequence[tuple[float, float]]], threshold: float, title: str,
                unit: str = "") -> bytes:
    """One line per version label; ``t`` in seconds (epoch or since bake start), shown relative to the first point.

    matplotlib is imported here, not at module top: the plugin imports this package
    in every pytest run and must stay cheap.
    """
    if not isinstance(threshold, int | float) or math.isnan(threshold):
        raise ValueError(f"plot {title!r}: threshold must be a number, got {threshold!r}")
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on CI or in the sandbox
    from matplotlib.figure import Figure

    # Figure() rather than pyplot: no global state, safe in threads and xdist workers
    fig = Figure(figsize=(8, 3.6), dpi=100)
    ax = fig.add_subplot()
    starts = [points[0][0] for points in series.values() if points]
    t0 = min(starts) if starts else 0.0
    for label in sorted(series):
        points = sorted(series[label])
        if not points:
            continue
        xs = [t - t0 for t, _ in points]
        ys = [v for _, v in points]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
    ax.axhline(threshold, color="crimson", linestyle="--", linewidth=1.2,
               label=f"threshold {threshold:g}{(' ' + unit) if unit else ''}")
    ax.set_title(title)
    ax.set_xlabel("seconds into the bake")
    ax.set_ylabel(unit or "value")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
