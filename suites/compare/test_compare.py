"""Compare gate (shift50): the new version against the old one serving at the same time.

Per function: error rate and p95 side by side, difference and ratio within
``policy.compare``, and a Mann-Whitney U test on per-interval p95 samples. Each
failure message shows both versions' numbers.
"""

from __future__ import annotations

from typing import Any

import pytest

CHECKS = ["error_rate", "p95", "mann_whitney"]


@pytest.fixture(scope="session")
def comparisons(llama: Any) -> list[Any]:
    from pytest_llamadeploy.metrics.compare import compare_versions
    from pytest_llamadeploy.metrics.query import ProviderError

    if not llama.old_versions or not llama.new_versions:
        pytest.fail(f"stage {llama.stage} names no old and new versions to compare "
                    f"(old={llama.old_versions}, new={llama.new_versions})", pytrace=False)
    start, end = llama.bake_window()
    policy = llama.policy
    try:
        found = compare_versions(llama.client("cloudwatch"), policy, policy.service.functions, policy.service.alias,
                                 llama.old_versions, llama.new_versions, start, end)
    except ProviderError as exc:
        pytest.fail(f"compare inconclusive: {exc}", pytrace=False)
    if not found:
        pytest.fail("no function runs different old and new versions: nothing to compare", pytrace=False)
    return found


@pytest.mark.parametrize("check", CHECKS)
def test_new_version_against_old(comparisons: list[Any], check: str, record_property: Any) -> None:
    lines = []
    failed = []
    for c in comparisons:
        verdict, message = {
            "error_rate": (c.error_verdict, c.error_message),
            "p95": (c.p95_verdict, c.p95_message),
            "mann_whitney": (c.rank_verdict, c.rank_message),
        }[check]
        text = message()
        lines.append(text)
        record_property(c.function, text)
        if verdict != "pass":
            failed.append(text)
    print("\n".join(lines))
    assert not failed, "\n".join(failed)
