"""What the sandbox's moto process adds to moto (owned by the metrics work; see MOTO.md).

``install()`` runs before the server starts (patches), ``start_background(state_dir)``
after (threads such as alarm evaluation).
"""

from __future__ import annotations

from pathlib import Path


def install() -> None:
    """Patch moto's backends where it lacks what CloudWatch does (placeholder until filled in)."""


def start_background(state_dir: Path) -> None:
    """Start background work inside the moto process (placeholder until filled in)."""
