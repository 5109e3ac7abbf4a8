"""Names of the built-in gate suites (folders under ``suites/``), apart from the policy model.

A team adds its own by declaring them in the policy's top-level ``suites:`` (policy.py); which
suite a test belongs to, and the refusal of a folder that is no suite, live in suiteassign.py.

The plugin classifies collected tests in every pytest run of the venv; this
module keeps that from importing the policy model (pydantic) when no gate runs.
"""

from __future__ import annotations

#: A suite's name (and folder): what a policy's top-level ``suites:`` may declare.
SUITE_NAME = r"^[a-z][a-z0-9_-]{0,62}$"

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
