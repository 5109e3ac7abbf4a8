"""Checklist gate: one test per item of the runbook's Pre-Deployment Checklist.

The controller ran ``ops.checklist.run_preflight`` (it publishes to SNS and
records to the ledger, so it runs once, there); each test reports one item's
pass/fail reason as the controller recorded it.
"""

from __future__ import annotations

import pytest

from pytest_llamadeploy.ops.checklist import CHECKS


def _result(llama) -> dict:
    result = llama.watch.get("action_result")
    if not isinstance(result, dict) or "checks" not in result:
        pytest.fail(f"stage {llama.stage}: the controller recorded no checklist result; run the preflight "
                    "stage (action: preflight)", pytrace=False)
    return result


@pytest.mark.parametrize("item", CHECKS)
def test_checklist_item(llama, item, record_property):
    checks = {c["name"]: c for c in _result(llama)["checks"]}
    assert item in checks, f"checklist item {item} was not checked (checked: {', '.join(checks)})"
    check = checks[item]
    record_property("reason", check["reason"])
    print(f"{item}: {check['reason']}")
    assert check["ok"], f"{item}: {check['reason']}"
