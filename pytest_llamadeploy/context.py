"""What a gate test knows about the stage it runs in (the ``llama`` fixture).

The controller decides and performs the stage's action, then writes this
context to a JSON file that every xdist worker reads, so all gate tests see the
same versions, targets and bake window.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .aws import AwsConfig
from .policy import LoadedPolicy, Stage, load_policy
from .targets import ResolvedTargets


@dataclass
class StageContext:
    env: str
    stage: str
    release: str
    policy_dir: str
    #: Lambda versions per function: what served before the action and the release's own.
    old_versions: dict[str, str] = field(default_factory=dict)
    new_versions: dict[str, str] = field(default_factory=dict)
    #: Alias state per function after the action: {"version": "3", "weights": {"4": 0.1}}.
    alias_after: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Epoch seconds: when traffic moved (start of the bake window) and when the bake ended.
    traffic_moved_at: float | None = None
    bake_ended_at: float | None = None
    #: True where the gates must probe the new version directly (it serves 0 % at deploy).
    probe_new_directly: bool = False
    approver: str | None = None
    policy_hash: str = ""
    run_id: str = ""
    artifacts_dir: str = ""
    # repr=False: pytest prints a failing test's arguments, and these hold DSNs and keys.
    aws: dict[str, Any] = field(default_factory=dict, repr=False)
    targets: dict[str, str] = field(default_factory=dict, repr=False)
    #: Results of the watch during the bake (metric evidence), filled by the controller.
    watch: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def loaded_policy(self) -> LoadedPolicy:
        return load_policy(self.policy_dir, self.env)

    @property
    def policy(self):  # -> Policy
        return self.loaded_policy.policy

    @property
    def stage_policy(self) -> Stage:
        return self.policy.stages[self.stage]

    @property
    def aws_config(self) -> AwsConfig:
        return AwsConfig(**self.aws)

    def client(self, service: str, **kw: Any) -> Any:
        return self.aws_config.client(service, **kw)

    @property
    def resolved_targets(self) -> ResolvedTargets:
        if self.targets:
            return ResolvedTargets(**self.targets)
        # Not persisted (they may hold passwords): every process resolves them from the
        # same environment variables / sandbox state the controller used.
        from .targets import resolve_targets

        return resolve_targets(self.policy)

    @property
    def api_function(self) -> str:
        return self.policy.service.api_function

    @property
    def ws_function(self) -> str:
        return self.policy.service.ws_function

    def action_result(self, kind: str) -> dict[str, Any]:
        """The record the controller's operation (backup, migration, restore) left for the suites.

        Fails the calling gate test when there is none: the suite must not pass on a
        result that was never produced.
        """
        record = self.watch.get("action_result")
        if not isinstance(record, dict) or record.get("kind") != kind:
            import pytest

            pytest.fail(f"stage {self.stage}: the controller recorded no {kind} result", pytrace=False)
        return record

    def bake_window(self) -> tuple[float, float]:
        """(start, end) epoch seconds of the bake, or of the last 5 minutes when nothing moved."""
        import time

        end = self.bake_ended_at or time.time()
        start = self.traffic_moved_at or end - 300.0
        return start, end

    def to_json(self) -> dict[str, Any]:
        """What is written to disk: targets only when no value carries a credential.

        A DSN with a password (prod) is left out, and every process resolves it from
        the same environment variables the controller used; the sandbox's have none.
        """
        from .redact import redact

        data = asdict(self)
        if any(redact(str(v)) != str(v) for v in self.targets.values()):
            data["targets"] = {}
        return data

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp.{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=2, default=str))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> StageContext:
        data = json.loads(path.read_text())
        return cls(**data)
