"""Hook specifications: how a user plugs in another traffic driver, ledger or notifier.

Implement any of these in a conftest.py or a plugin; the first non-None result
wins for the factories. Arguments are passed by keyword.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_llamadeploy_traffic_driver(policy: Any, aws: Any) -> Any:
    """Return the traffic driver for ``policy`` (default: Lambda alias weighted routing).

    A driver provides ``read()``, ``latest_versions()``, ``apply(target)`` and
    ``validate_versions(versions)`` like :class:`pytest_llamadeploy.traffic.LambdaAliasDriver`.
    """


@pytest.hookspec(firstresult=True)
def pytest_llamadeploy_ledger_backend(policy: Any, aws: Any, rootdir: Any) -> Any:
    """Return the ledger for ``policy`` (default: DynamoDB table or local file, per ``policy.ledger``)."""


@pytest.hookspec
def pytest_llamadeploy_notify(event: str, record: dict[str, Any]) -> None:
    """Called on stage ``start``, ``pass``, ``fail`` and ``rollback`` with the stage record (secrets redacted).

    Exceptions are reported but never change the verdict: a notifier must not
    be able to stop a rollback.
    """
