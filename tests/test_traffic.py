"""The Lambda alias driver against moto in server mode."""

from __future__ import annotations

import pytest

from pytest_llamadeploy.traffic import (
    AliasState,
    LambdaAliasDriver,
    TrafficError,
    promote_target,
    shift_target,
)
from tests.support.aws_setup import FUNCTIONS, alias_state, create_service, lambda_client
from tests.support.moto import reset

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)


@pytest.fixture
def driver(aws: str) -> LambdaAliasDriver:
    reset(aws)
    create_service(aws, extra_versions=2)  # versions 1, 2, 3
    return LambdaAliasDriver(lambda_client(aws), FUNCTIONS, "live")


def test_shift_promote_and_read_back(driver: LambdaAliasDriver, aws: str) -> None:
    assert driver.latest_versions() == {fn: "3" for fn in FUNCTIONS}
    current = driver.read()
    after = driver.apply(shift_target(current, {f: "1" for f in FUNCTIONS}, {f: "3" for f in FUNCTIONS}, 0.1))
    assert alias_state(aws) == {fn: ("1", {"3": 0.1}) for fn in FUNCTIONS}
    assert after["onchain-api"].share_of("1") == pytest.approx(0.9)
    driver.apply(promote_target({f: "3" for f in FUNCTIONS}))
    assert alias_state(aws) == {fn: ("3", {}) for fn in FUNCTIONS}
    again = driver.apply(promote_target({f: "3" for f in FUNCTIONS}))  # idempotent
    assert again == {fn: AliasState("3", {}) for fn in FUNCTIONS}


def test_unknown_version_is_refused_before_anything_moves(driver: LambdaAliasDriver, aws: str) -> None:
    with pytest.raises(TrafficError, match="onchain-ws has no version 9"):
        driver.apply({"onchain-api": AliasState("2"), "onchain-ws": AliasState("9")})
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}


def test_half_shift_is_undone(driver: LambdaAliasDriver, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = driver._write

    def failing_write(fn: str, state: AliasState) -> None:
        if fn == "onchain-ws" and state.weights:
            raise RuntimeError("ThrottlingException: Rate exceeded")
        real_write(fn, state)

    monkeypatch.setattr(driver, "_write", failing_write)
    with pytest.raises(TrafficError, match="Rate exceeded; every function restored"):
        driver.apply({fn: AliasState("1", {"2": 0.5}) for fn in FUNCTIONS})
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}  # onchain-api was moved, then put back


def test_weights_out_of_range(driver: LambdaAliasDriver) -> None:
    with pytest.raises(TrafficError, match="outside"):
        driver.apply({"onchain-api": AliasState("1", {"2": 1.5})})
    client = lambda_client(driver.client.meta.endpoint_url)
    assert client.get_alias(FunctionName="onchain-api", Name="live")["FunctionVersion"] == "1"
