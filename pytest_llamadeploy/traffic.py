"""Traffic through Lambda alias weighted routing, every function of the service together.

The alias points at the old version; ``RoutingConfig.AdditionalVersionWeights``
gives the new version its share. Every change is read back and compared, and
if one function moves while another fails, all of them are put back where they
were: a half-shifted service (API on the new version, WebSocket on the old) is
the one state we never leave behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class AliasState:
    version: str
    weights: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "weights": dict(self.weights)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AliasState:
        return cls(str(data["version"]), {str(k): float(v) for k, v in (data.get("weights") or {}).items()})

    def share_of(self, version: str) -> float:
        """The share of traffic ``version`` receives under this alias state."""
        extra = sum(self.weights.values())
        if version == self.version:
            return round(1.0 - extra, 6)
        return self.weights.get(version, 0.0)

    def describe(self) -> str:
        if not self.weights:
            return f"v{self.version} 100%"
        parts = [f"v{self.version} {self.share_of(self.version):.0%}"]
        parts += [f"v{v} {w:.0%}" for v, w in sorted(self.weights.items())]
        return ", ".join(parts)


class TrafficError(Exception):
    pass


def _same(a: AliasState, b: AliasState) -> bool:
    if a.version != b.version or set(a.weights) != set(b.weights):
        return False
    return all(abs(a.weights[k] - b.weights[k]) < 1e-9 for k in a.weights)


class TrafficDriver(Protocol):
    """What the stage runner asks of a traffic driver (``newhooks.pytest_llamadeploy_traffic_driver``).

    Keys of every mapping are the policy's ``service.functions``; versions are strings.
    """

    def read(self) -> dict[str, AliasState]:
        """What serves now, per function."""
        ...

    def latest_versions(self) -> dict[str, str | None]:
        """The newest published version per function (the deploy stage's new version), None if none."""
        ...

    def validate_versions(self, versions: Mapping[str, str]) -> None:
        """Raise :class:`TrafficError` naming the function and version when one cannot take traffic."""
        ...

    def apply(self, target: Mapping[str, AliasState]) -> dict[str, AliasState]:
        """Move every function to ``target`` together (all or none), read back; return what serves after."""
        ...


class LambdaAliasDriver:
    """The default traffic driver (see ``newhooks.llamadeploy_traffic_driver``)."""

    def __init__(self, lambda_client: Any, functions: list[str], alias: str):
        self.client = lambda_client
        self.functions = list(functions)
        self.alias = alias

    def describe(self) -> str:
        return f"Lambda alias {self.alias!r} on {', '.join(self.functions)}"

    def read_one(self, function: str) -> AliasState:
        alias = self.client.get_alias(FunctionName=function, Name=self.alias)
        weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        return AliasState(str(alias["FunctionVersion"]), {str(k): float(v) for k, v in weights.items()})

    def read(self) -> dict[str, AliasState]:
        return {fn: self.read_one(fn) for fn in self.functions}

    def latest_versions(self) -> dict[str, str | None]:
        """The highest published version number of each function (None if only $LATEST)."""
        latest: dict[str, str | None] = {}
        for fn in self.functions:
            numbers: list[int] = []
            for page in self.client.get_paginator("list_versions_by_function").paginate(FunctionName=fn):
                numbers += [int(v["Version"]) for v in page["Versions"] if v["Version"].isdigit()]
            latest[fn] = str(max(numbers)) if numbers else None
        return latest

    def validate_versions(self, versions: Mapping[str, str]) -> None:
        """Refuse a target naming a version that does not exist (moto, unlike Lambda, would accept it)."""
        for fn, version in versions.items():
            if fn not in self.functions:
                raise TrafficError(f"function {fn!r} is not one of the service's functions {self.functions}")
            try:
                self.client.get_function_configuration(FunctionName=fn, Qualifier=str(version))
            except self.client.exceptions.ResourceNotFoundException:
                raise TrafficError(f"{fn} has no version {version}") from None

    def _write(self, function: str, state: AliasState) -> None:
        self.client.update_alias(
            FunctionName=function,
            Name=self.alias,
            FunctionVersion=state.version,
            RoutingConfig={"AdditionalVersionWeights": dict(state.weights)},
        )

    def apply(self, target: Mapping[str, AliasState]) -> dict[str, AliasState]:
        """Move every function to ``target``, read back, and undo everything if any step fails."""
        for fn, state in target.items():
            for w in state.weights.values():
                if not 0.0 <= w < 1.0:
                    raise TrafficError(f"{fn}: weight {w} is outside [0, 1)")
            if state.version in state.weights:
                raise TrafficError(f"{fn}: version {state.version} cannot be both primary and weighted")
        self.validate_versions({fn: s.version for fn, s in target.items()})
        self.validate_versions({fn: v for fn, s in target.items() for v in s.weights})
        before = self.read()
        moved: list[str] = []
        try:
            for fn, state in target.items():
                if _same(before[fn], state):
                    continue  # already there: idempotent
                moved.append(fn)
                self._write(fn, state)
                after = self.read_one(fn)
                if not _same(after, state):
                    raise TrafficError(f"{fn}: alias reads back as {after.describe()}, expected {state.describe()}")
        except Exception as exc:
            problems = self._restore(before, moved)
            detail = f"; restoring failed too: {'; '.join(problems)}" if problems else "; every function restored"
            raise TrafficError(f"traffic change failed: {exc}{detail}") from exc
        return self.read()

    def _restore(self, before: Mapping[str, AliasState], moved: list[str]) -> list[str]:
        problems = []
        for fn in moved:
            try:
                self._write(fn, before[fn])
                if not _same(self.read_one(fn), before[fn]):
                    problems.append(f"{fn} does not read back as {before[fn].describe()}")
            except Exception as exc:  # keep restoring the others
                problems.append(f"{fn}: {exc}")
        return problems


def shift_target(current: Mapping[str, AliasState], old: Mapping[str, str], new: Mapping[str, str],
                 weight: float) -> dict[str, AliasState]:
    """Old version primary, new version at ``weight`` (0 clears the weights)."""
    return {fn: AliasState(old[fn], {new[fn]: weight} if weight > 0 else {}) for fn in current}


def promote_target(new: Mapping[str, str]) -> dict[str, AliasState]:
    return {fn: AliasState(v, {}) for fn, v in new.items()}


def rollback_target(to: Mapping[str, str]) -> dict[str, AliasState]:
    return {fn: AliasState(v, {}) for fn, v in to.items()}
