"""Names of the gate suites (folders under ``suites/``), apart from the policy model.

The plugin classifies collected tests in every pytest run of the venv; this
module keeps that from importing the policy model (pydantic) when no gate runs.
"""

from __future__ import annotations

#: Gate suites the plugin knows how to select (folders under ``suites/``).
KNOWN_SUITES = (
    "checklist",
    "health",
    "functional",
    "performance",
    "monitoring",
    "compare",
    "migration",
    "backup",
    "restore",
)
