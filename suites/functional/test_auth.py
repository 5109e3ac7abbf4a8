"""Functional gate: token authentication works and refuses missing and bad tokens."""

from __future__ import annotations

from typing import Any

from pytest_llamadeploy.sandbox.state import RELEASE_HEADER

PROTECTED = "/chains"


def release_of(response: Any) -> str:
    return response.headers.get(RELEASE_HEADER, "(no x-llama-release header)")


def test_token_grants_access(api: Any, api_url: str, auth: dict[str, str], where: str) -> None:
    response = api.get(PROTECTED, headers=auth)
    assert response.status_code == 200, (
        f"GET {api_url}{PROTECTED} via {where} with a fresh token: expected 200, got {response.status_code} "
        f"(release {release_of(response)}) {response.text[:300]}")
    chains = response.json().get("chains")
    assert isinstance(chains, list) and chains, (
        f"GET {api_url}{PROTECTED} via {where}: expected a non-empty chains list, got {response.text[:300]}")


def test_missing_token_is_refused(api: Any, api_url: str, where: str) -> None:
    response = api.get(PROTECTED)
    assert response.status_code == 401, (
        f"GET {api_url}{PROTECTED} via {where} without Authorization: expected 401, got {response.status_code} "
        f"(release {release_of(response)}) {response.text[:300]}")


def test_bad_tokens_are_refused(api: Any, api_url: str, token: str, where: str) -> None:
    head, _, signature = token.partition(".")
    forged = f"{head}.{signature[:-2]}{'AA' if not signature.endswith('AA') else 'BB'}"
    for label, header in [("garbage", "Bearer not-a-token"), ("forged signature", f"Bearer {forged}"),
                          ("wrong scheme", f"Basic {token}")]:
        response = api.get(PROTECTED, headers={"Authorization": header})
        assert response.status_code == 401, (
            f"GET {api_url}{PROTECTED} via {where} with a {label} token: expected 401, got {response.status_code} "
            f"(release {release_of(response)}) {response.text[:300]}")
