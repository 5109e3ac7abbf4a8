"""The shapes operations return and the ledger they write to."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar


class OpsError(Exception):
    """A mistake in input or setup: the message names what was checked and the fix."""


class Ledger(Protocol):
    """The two ledger calls operations use (implemented by ``pytest_llamadeploy.ledger.Ledger``)."""

    def put_artifact(self, env: str, release: str, kind: str, data: dict[str, Any]) -> Any: ...

    def get_artifacts(self, env: str, kind: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class CheckResult:
    """One item of the pre-deployment checklist."""

    name: str
    ok: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """One troubleshooting check of ``llamadeploy doctor``; ``resolution`` quotes the runbook."""

    name: str
    ok: bool
    detail: str
    resolution: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


T = TypeVar("T")


def poll(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2,
         max_interval: float = 5.0) -> T:
    """Call ``check`` until it returns something other than None, or raise after ``timeout`` seconds.

    The interval grows so a sandbox (instant) answers fast and AWS (minutes) is
    not hammered.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what}: not done after {timeout:g}s (policy key backup.timeout)")
        time.sleep(min(interval, remaining))
        interval = min(interval * 2, max_interval)
