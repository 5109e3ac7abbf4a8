"""Traffic through Lambda alias weighted routing, every function of the service together.

The alias points at the old version; ``RoutingConfig.AdditionalVersionWeights``
gives the new version its share. Every change is read back and compared, and
if one function moves while another fails, all of them are put back where they
were: a half-shifted service (API on the new version, WebSocket on the old) is
the one state we never leave behind.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: The deploy contract: a published version names its release in its Description (as a word,
#: e.g. "release v1.2.3") or in this environment variable of its configuration.
RELEASE_VARIABLE = "LLAMA_RELEASE"


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
    Optional, used when present (see :class:`LambdaAliasDriver`): ``published_versions()``
    (the deploy adopts only versions that name the release; without it, the versions
    that changed), ``write_one(function, state)`` (a rollback moves one function without
    undoing the others; without it, ``apply`` of that one function) and ``on_write``
    (called after each alias write: the runner's checkpoints).
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
        #: Called with the function name after each UpdateAlias (the runner's checkpoints).
        self.on_write: Callable[[str], None] | None = None

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

    def published_versions(self) -> dict[str, list[PublishedVersion]]:
        """Every published version of each function with the release it names (see RELEASE_VARIABLE)."""
        out: dict[str, list[PublishedVersion]] = {}
        for fn in self.functions:
            found: list[PublishedVersion] = []
            for page in self.client.get_paginator("list_versions_by_function").paginate(FunctionName=fn):
                for v in page["Versions"]:
                    if not str(v["Version"]).isdigit():
                        continue
                    variables = (v.get("Environment") or {}).get("Variables") or {}
                    found.append(PublishedVersion(str(v["Version"]), str(v.get("Description") or ""),
                                                  str(variables.get(RELEASE_VARIABLE) or "")))
            out[fn] = sorted(found, key=lambda p: int(p.version))
        return out

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
        if self.on_write is not None:
            self.on_write(function)

    def write_one(self, function: str, state: AliasState) -> AliasState:
        """Move one function and read it back, without undoing anything on failure (rollback's step)."""
        self._write(function, state)
        return self.read_one(function)

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
    """Old version primary, new version at ``weight`` (0 clears the weights).

    A function the release did not change (its new version is its old one: a partial
    release) stays where it is, all on its version: Lambda refuses a version that is
    both the alias's primary and weighted.
    """
    return {fn: AliasState(old[fn], {new[fn]: weight} if weight > 0 and new[fn] != old[fn] else {})
            for fn in current}


def changed_functions(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """The functions a release publishes a new version of (the others keep their version: a partial release)."""
    return [fn for fn, version in new.items() if str(version) != str(old.get(fn))]


def describe_release_scope(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """``onchain-api v1 -> v2; onchain-ws stays on v1 (not in this release)``: what a release moves."""
    changed = set(changed_functions(old, new))
    return "; ".join(f"{fn} v{old.get(fn)} -> v{v}" if fn in changed else f"{fn} stays on v{v} (not in this release)"
                     for fn, v in new.items())


def promote_target(new: Mapping[str, str]) -> dict[str, AliasState]:
    return {fn: AliasState(v, {}) for fn, v in new.items()}


def rollback_target(to: Mapping[str, str]) -> dict[str, AliasState]:
    return {fn: AliasState(v, {}) for fn, v in to.items()}


@dataclass(frozen=True)
class PublishedVersion:
    version: str
    description: str
    release_variable: str

    def names(self, release: str) -> bool:
        """True when this version carries ``release`` as its marker (the deploy contract)."""
        return self.release_variable == release or release in re.split(r"[\s,;]+", self.description)

    def describe(self) -> str:
        marker = self.description or (f"{RELEASE_VARIABLE}={self.release_variable}" if self.release_variable else "")
        return f"v{self.version} ({marker!r})" if marker else f"v{self.version} (no release marker)"


def foreign_traffic(current: Mapping[str, AliasState], old: Mapping[str, str],
                    new: Mapping[str, str]) -> dict[str, str]:
    """Functions serving a version that is neither ``old`` nor ``new``: traffic a release did not put there."""
    foreign: dict[str, str] = {}
    for fn, state in current.items():
        mine = {str(old.get(fn)), str(new.get(fn))}
        serving = {state.version} | {v for v, w in state.weights.items() if w > 0}
        if not serving <= mine:
            foreign[fn] = state.describe()
    return foreign


@dataclass
class RestoreReport:
    """Per function: the alias before, the target, the alias after, whether it got there, the last error."""

    functions: dict[str, dict[str, Any]]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(f["ok"] for f in self.functions.values())

    def failed(self) -> dict[str, str]:
        return {fn: str(f["error"]) for fn, f in self.functions.items() if not f["ok"]}


def restore_each(driver: Any, target: Mapping[str, AliasState], *, deadline: float,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = time.sleep,
                 stop: Callable[[], str | None] = lambda: None,
                 redact: Callable[[str], str] = lambda s: s) -> RestoreReport:
    """Move every function to ``target`` one by one, retrying with backoff until ``deadline`` (monotonic).

    Unlike ``apply``, a function that cannot be moved does not undo the ones that
    could: a rollback restores as much as it can and says what it could not.
    ``stop()`` returning a reason (the lease is lost) ends the retries at once.
    """
    began = clock()
    report: dict[str, dict[str, Any]] = {
        fn: {"before": None, "target": s.to_json(), "after": None, "ok": False, "error": None, "attempts": 0}
        for fn, s in target.items()}
    pending = list(target)
    delay = 0.5
    write_one = getattr(driver, "write_one", None)
    while True:
        if any(report[fn]["before"] is None for fn in pending):
            try:
                for fn, state in driver.read().items():
                    if fn in report and report[fn]["before"] is None:
                        report[fn]["before"] = state.to_json()
                        if fn in pending and _same(state, target[fn]):
                            # Already there (the failed action never moved it): nothing to write.
                            report[fn].update(after=state.to_json(), ok=True)
                            pending.remove(fn)
            except Exception as exc:  # noqa: BLE001 - recorded; the write is what matters
                for fn in pending:
                    report[fn]["error"] = redact(f"reading the alias: {type(exc).__name__}: {exc}")[:500]
        for fn in list(pending):
            entry = report[fn]
            entry["attempts"] += 1
            try:
                after = write_one(fn, target[fn]) if write_one else driver.apply({fn: target[fn]})[fn]
            except Exception as exc:  # noqa: BLE001 - throttling, a 5xx, a reset: retried until the deadline
                entry["error"] = redact(f"{type(exc).__name__}: {exc}")[:500]
                continue
            entry["after"] = after.to_json()
            if _same(after, target[fn]):
                entry["ok"], entry["error"] = True, None
                pending.remove(fn)
            else:
                entry["error"] = f"reads back as {after.describe()}, expected {target[fn].describe()}"
        if not pending or stop() is not None or clock() + delay > deadline:
            break
        sleep(delay)
        delay = min(delay * 2, 8.0)
    if pending:
        try:  # what is really there now, for the record and the repair command
            now_state = driver.read()
            for fn in pending:
                if fn in now_state:
                    report[fn]["after"] = now_state[fn].to_json()
        except Exception:  # noqa: BLE001 - the last write's readback, or None, stays
            pass
    return RestoreReport(report, round(clock() - began, 3))
