"""The stage runner: decide, check preconditions, act, bake under the watch, give the verdict.

Everything a stage will do is decided (``decide``) before anything changes;
``--plan`` prints that decision and stops there. A refused stage raises
:class:`Refused` before the lock is taken or the alias touched.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aws import AwsConfig, aws_config
from .context import StageContext
from .ledger import FINAL, Ledger, LockHeld, StageRecord, iso, new_run_id, now, open_ledger, this_owner
from .options import Settings, approver_from
from .policy import LoadedPolicy, Stage
from .redact import redact
from .targets import resolve_targets
from .traffic import (
    AliasState,
    LambdaAliasDriver,
    TrafficError,
    promote_target,
    rollback_target,
    shift_target,
)

#: Stages whose action moves traffic and therefore can be rolled back.
_MOVES = ("deploy", "shift", "promote")


class Refused(Exception):
    """The stage cannot start; nothing was changed. ``problems`` are self-contained lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Precondition:
    name: str
    ok: bool
    detail: str


@dataclass
class Decision:
    env: str
    stage: str
    release: str
    stage_policy: Stage
    current: dict[str, AliasState]
    target: dict[str, AliasState] | None
    old_versions: dict[str, str]
    new_versions: dict[str, str]
    preconditions: list[Precondition] = field(default_factory=list)
    approver: str | None = None
    resume: StageRecord | None = None
    leftovers: list[StageRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.preconditions)

    def problems(self) -> list[str]:
        return [f"precondition {p.name} not met: {p.detail}" for p in self.preconditions if not p.ok]


def _versions(states: dict[str, AliasState]) -> dict[str, str]:
    return {fn: s.version for fn, s in states.items()}


class StageRunner:
    def __init__(self, settings: Settings, loaded: LoadedPolicy, hook: Any, out: Callable[[str], None],
                 progress: Callable[[str, bool], None] | None = None):
        assert settings.env and settings.stage
        self.settings = settings
        self.loaded = loaded
        self.policy = loaded.policy
        self.env = settings.env
        self.stage = settings.stage
        self.stage_policy = self.policy.stages[self.stage]
        self.release = settings.release or ""
        self.hook = hook
        self.out = out
        self.progress = progress or (lambda line, same_line: out(line))
        self.aws: AwsConfig = aws_config(self.policy)
        self.driver = hook.pytest_llamadeploy_traffic_driver(policy=self.policy, aws=self.aws) or LambdaAliasDriver(
            self.aws.client("lambda"), self.policy.service.functions, self.policy.service.alias
        )
        #: The preview stage's alias: the release under test at 0 %, never an untested version after.
        self.preview = LambdaAliasDriver(self.aws.client("lambda"), self.policy.service.functions,
                                         self.policy.service.preview_alias)
        self.ledger: Ledger = hook.pytest_llamadeploy_ledger_backend(
            policy=self.policy, aws=self.aws, rootdir=settings.rootdir
        ) or open_ledger(self.policy, self.aws, settings.rootdir)
        self.run_id = new_run_id()
        self.run_dir = settings.artifacts / self.run_id
        self.decision: Decision | None = None
        self.record: StageRecord | None = None
        self.context: StageContext | None = None
        self.failure: str | None = None
        self.watch: Any = None
        self.rolled_back = False
        self.rollback_detail: dict[str, Any] | None = None
        self._rollback_lock = threading.Lock()
        self.steps: list[dict[str, Any]] = []
        self.targets: dict[str, str] = {}

    # ------------------------------------------------------------------ decide

    def decide(self) -> Decision:
        """Read-only: what this stage would do, and whether it may."""
        policy, sp = self.policy, self.stage_policy
        current = self.driver.read()
        checks: list[Precondition] = []
        old = _versions(current)
        new: dict[str, str] = {}
        target: dict[str, AliasState] | None = None

        if sp.action in _MOVES and not self.release:
            checks.append(Precondition("release", False, f"stage {self.stage} needs --release TAG"))

        previous = policy.previous_stage(self.stage)
        if previous is not None:
            rec = self.ledger.get(self.env, self.release, previous)
            if rec is None:
                checks.append(Precondition(
                    "previous stage", False,
                    f"{previous} has not run for release {self.release} in {self.env}; run "
                    f"`pytest --env={self.env} --stage={previous} --release={self.release}` first "
                    f"(plan: {' -> '.join(policy.plan)})"))
            elif rec.status != "passed":
                checks.append(Precondition(
                    "previous stage", False,
                    f"{previous} for release {self.release} is {rec.status} ({rec.reason or 'no reason recorded'}); "
                    f"it must pass before {self.stage}"))
            else:
                checks.append(Precondition("previous stage", True, f"{previous} passed for {self.release} at {iso(rec.ended_at)}"))

        try:
            self.targets = resolve_targets(policy).__dict__
        except Exception as exc:  # TargetError, SandboxNotRunning: say what to set, change nothing
            checks.append(Precondition("targets", False, str(exc)))

        approver = approver_from(self.settings, policy.approval.env_vars)
        if policy.approval.required:
            checks.append(Precondition(
                "approval", bool(approver),
                f"approved by {approver}" if approver else
                f"{self.env} requires an approval: pass --approved-by NAME or set {' or '.join(policy.approval.env_vars)}"))

        lock = self.ledger.current_lock(self.env)
        if lock is None:
            checks.append(Precondition("lock", True, f"{self.env} is free"))
        else:
            stale = lock.stale_reason(now())
            checks.append(Precondition("lock", stale is not None,
                                       f"env {self.env!r} is locked: {lock.describe()}"
                                       + (f"; may be taken over: {stale}" if stale else
                                          "; wait for that run, or take over once its lease expires")))

        resume: StageRecord | None = None
        leftovers: list[StageRecord] = []
        for rec in self.ledger.records(self.env):
            if rec.status != "started":
                continue
            if (rec.release, rec.stage) == (self.release, self.stage):
                resume = rec
                checks.append(Precondition("unfinished run", True,
                                           f"resuming {rec.stage} of {rec.release} started by {rec.owner} at {iso(rec.started_at)} that never finished"))
            elif sp.action == "rollback":
                leftovers.append(rec)
                checks.append(Precondition("unfinished run", True,
                                           f"{rec.stage} of {rec.release} (started {iso(rec.started_at)} by {rec.owner}, never finished) will be resolved by this rollback"))
            else:
                checks.append(Precondition(
                    "unfinished run", False,
                    f"{rec.stage} of release {rec.release} was started by {rec.owner} at {iso(rec.started_at)} and never "
                    f"finished (killed?). Resolve it first: resume it with `pytest --env={self.env} --stage={rec.stage} "
                    f"--release={rec.release}` or roll back with `pytest --env={self.env} --stage=rollback --release={rec.release}`"))

        if sp.action == "deploy":
            prior = self.ledger.get(self.env, self.release, "deploy") if self.release else None
            if prior and prior.new_versions:
                new = dict(prior.new_versions)
                old = dict(prior.old_versions) or old
            target = promote_target(new) if (sp.weight == 1.0 and new) else None
        elif sp.action in ("shift", "promote"):
            deploy_rec = self._deploy_record()
            if deploy_rec is None or not deploy_rec.new_versions:
                checks.append(Precondition("versions", False, f"no deployed versions recorded for release {self.release} in {self.env}"))
            else:
                new = dict(deploy_rec.new_versions)
                old = dict(deploy_rec.old_versions)
                drift = {fn: s.version for fn, s in current.items() if s.version not in (old.get(fn), new.get(fn))}
                if drift:
                    checks.append(Precondition("versions", False,
                                               f"the alias moved since deploy (now {drift}, deploy recorded old {old}, new {new}); "
                                               "deploy again or roll back"))
                else:
                    checks.append(Precondition("versions", True, f"old {old} -> new {new}"))
                    if sp.action == "shift":
                        target = shift_target(current, old, new, float(sp.weight or 0.0))
                    else:
                        target = promote_target(new)
        elif sp.action == "rollback":
            to, why = self._rollback_versions(current)
            if to is None:
                checks.append(Precondition("rollback target", False, why))
            else:
                try:
                    self.driver.validate_versions(to)
                    checks.append(Precondition("rollback target", True, why))
                    target = rollback_target(to)
                    new = to
                except TrafficError as exc:
                    checks.append(Precondition("rollback target", False, f"{exc} (from {why})"))
                if self.settings.to_version is not None:
                    checks.extend(self._known_bad(to))
        else:
            deploy_rec = self._deploy_record()
            if deploy_rec and deploy_rec.new_versions:
                new, old = dict(deploy_rec.new_versions), dict(deploy_rec.old_versions)
            else:
                new = _versions(current)

        self.decision = Decision(self.env, self.stage, self.release, sp, current, target, old, new, checks,
                                 approver, resume, leftovers)
        return self.decision

    def _deploy_record(self) -> StageRecord | None:
        return self.ledger.get(self.env, self.release, "deploy") if self.release else None

    def _known_bad(self, to: dict[str, str]) -> list[Precondition]:
        """Refuse a hand-picked rollback target that was a release's new version and failed its gate.

        At 3 a.m. a version number is easy to mistype, and "roll back to 7" where 7
        is what was rolled back an hour ago re-ships the incident. ``--emergency
        --reason`` overrides (recorded), for when that version really is the way out.
        """
        bad: list[str] = []
        for rec in self.ledger.records(self.env):
            if rec.status not in ("rolled_back", "failed") or not rec.new_versions or rec.stage == "rollback":
                continue
            for fn, version in to.items():
                if str(rec.new_versions.get(fn)) == str(version) and str(rec.old_versions.get(fn)) != str(version):
                    bad.append(f"{fn} version {version} was release {rec.release}'s new version and its "
                               f"{rec.stage} stage ended {rec.status} (run {rec.run_id})")
        if not bad:
            return []
        history = "; ".join(sorted(set(bad)))
        if self.settings.emergency:
            return [Precondition("rollback target gate history", True,
                                 f"{history} - accepted with --emergency: {self.settings.reason}")]
        return [Precondition("rollback target gate history", False,
                             f"{history}: rolling back to a version that failed its gate re-ships that failure. "
                             "Pick another --to-version, or pass --emergency --reason TEXT if this version really "
                             "is the way out")]

    def _rollback_versions(self, current: dict[str, AliasState]) -> tuple[dict[str, str] | None, str]:
        to = self.settings.to_version
        fns = self.policy.service.functions
        if isinstance(to, str):
            return {fn: to for fn in fns}, f"--to-version {to}"
        if isinstance(to, dict):
            unknown = sorted(set(to) - set(fns))
            if unknown:
                return None, f"--to-version names {unknown}, not functions of the service ({', '.join(fns)})"
            return {fn: to.get(fn, current[fn].version) for fn in fns}, f"--to-version {to}"
        if any(s.weights for s in current.values()):
            return _versions(current), "mid-shift: every function back to its primary (old) version"
        served = _versions(current)
        for rec in reversed(self.ledger.records(self.env)):
            if rec.new_versions == served and rec.old_versions and rec.old_versions != served:
                return dict(rec.old_versions), f"previous version before release {rec.release} ({rec.stage} record)"
        return None, (f"no previous version is recorded for what serves now ({served}); "
                      "pass --to-version N (or fn=N,fn=N)")

    # ------------------------------------------------------------------- start

    def start(self) -> None:
        decision = self.decision or self.decide()
        if not decision.ok:
            raise Refused(decision.problems())
        try:
            taken = self.ledger.acquire_lock(self.env, self.run_id, self.policy.ledger.lease,
                                             stage=self.stage, release=self.release)
        except LockHeld as exc:
            raise Refused([f"precondition lock not met: {exc}"]) from None
        if taken is not None:
            msg = f"took over the lock of {self.env}: {taken.describe()} ({taken.stale_reason(now())})"
            self.out(msg)
            self.ledger.put_artifact(self.env, self.release, "lock_takeover",
                                     {"previous": taken.__dict__, "by": this_owner(), "run_id": self.run_id})
        self.record = StageRecord(
            env=self.env, release=self.release, stage=self.stage, status="started", run_id=self.run_id,
            owner=this_owner(), started_at=now(), approver=decision.approver, policy_hash=self.loaded.sha256,
            weights_before={fn: s.to_json() for fn, s in decision.current.items()},
            old_versions=decision.old_versions, new_versions=decision.new_versions,
            details={"resumed_run": decision.resume.run_id} if decision.resume else {},
        )
        if self.settings.emergency:
            self.record.details["emergency_reason"] = self.settings.reason
        elif self.settings.reason:
            self.record.details["reason"] = self.settings.reason
        self.ledger.put(self.record)
        self._notify("start")
        self.out(f"llamadeploy: {self.stage} of {self.release or '(no release)'} in {self.env} started "
                 f"(run {self.run_id}, ledger {self.ledger.describe()})")

    # --------------------------------------------------------------------- act

    def act(self) -> StageContext:
        """Perform the action; a failure is recorded in ``self.failure`` (the verdict rolls back)."""
        assert self.decision and self.record
        d, sp = self.decision, self.stage_policy
        moved_at: float | None = None
        probe_direct = False
        action_result: Any = None
        try:
            if sp.action == "deploy":
                probe_direct = sp.weight != 1.0
                self._deploy()
                if self.failure is None:
                    self._point_preview(self.record.new_versions, "the release under test")
                if self.failure is None and sp.weight == 1.0:
                    self._apply(promote_target(self.record.new_versions), "promote (all at once)")
                    moved_at = now()
            elif sp.action in ("shift", "promote", "rollback"):
                assert d.target is not None
                self._apply(d.target, f"{sp.action} to {self._describe_target(d.target)}")
                moved_at = now()
            elif sp.action in ("preflight", "backup", "migrate", "restore"):
                action_result = self._operation(sp.action)
        except TrafficError as exc:
            self.failure = f"provider error: {exc}"
        except Exception as exc:  # an unexpected error must still lead to a verdict and a rollback
            self.failure = f"provider error: {type(exc).__name__}: {redact(str(exc))}"
        targets = self.targets
        self.context = StageContext(
            env=self.env, stage=self.stage, release=self.release, policy_dir=str(self.settings.policy_dir),
            old_versions=self.record.old_versions, new_versions=self.record.new_versions,
            alias_after={fn: s.to_json() for fn, s in self._read_safely().items()},
            traffic_moved_at=moved_at, probe_new_directly=probe_direct, approver=d.approver,
            policy_hash=self.loaded.sha256, run_id=self.run_id, artifacts_dir=str(self.run_dir),
            aws=self.aws.to_json(),
            targets=targets,
        )
        if action_result is not None:
            self.context.watch["action_result"] = action_result
        self.save_context()
        return self.context

    def _point_preview(self, versions: dict[str, str], why: str) -> None:
        """Point the preview alias at ``versions`` (the preview stage's integrations call it)."""
        if not versions:
            return
        started = time.time()
        after = self.preview.apply(promote_target(versions))
        self.steps.append({"name": f"preview alias {self.policy.service.preview_alias} -> {versions} ({why})",
                           "start": started, "stop": time.time(), "status": "passed",
                           "after": {fn: s.to_json() for fn, s in after.items()}})

    def _read_safely(self) -> dict[str, AliasState]:
        try:
            return self.driver.read()
        except Exception:
            return {}

    def save_context(self) -> None:
        assert self.context is not None
        self.context.save(self.run_dir / "context.json")

    @staticmethod
    def _describe_target(target: dict[str, AliasState]) -> str:
        return "; ".join(f"{fn}: {s.describe()}" for fn, s in target.items())

    def _apply(self, target: dict[str, AliasState], label: str) -> None:
        started = time.time()
        after = self.driver.apply(target)
        self.steps.append({"name": label, "start": started, "stop": time.time(), "status": "passed",
                           "after": {fn: s.to_json() for fn, s in after.items()}})
        self.out(f"llamadeploy: {label}: done, read back {self._describe_target(after)}")

    def _deploy(self) -> None:
        assert self.record is not None
        from .deploycmd import run_deploy

        prior = self.decision.resume if self.decision else None
        recorded = self._deploy_record()
        if recorded and recorded.status == "passed" and recorded.new_versions and recorded.run_id != self.run_id:
            self.out(f"llamadeploy: release {self.release} already deployed as {recorded.new_versions}; not deploying again")
            self.record.new_versions = dict(recorded.new_versions)
            self.record.old_versions = dict(recorded.old_versions)
            return
        before = self.driver.latest_versions()
        started = time.time()
        result = run_deploy(self.policy.deploy, env=self.env, release=self.release, cwd=self.settings.rootdir,
                            log_path=self.run_dir / "deploy.log")
        self.steps.append({"name": f"deploy command: {' '.join(result.argv)}", "start": started, "stop": time.time(),
                           "status": "passed" if result.ok else "failed", "output": result.output[-20000:]})
        self.out(f"llamadeploy: {result.summary()}")
        if not result.ok:
            self.failure = f"provider error: {result.summary()}; last output: {result.output.strip()[-500:]}"
            return
        after = self.driver.latest_versions()
        new = {fn: v for fn, v in after.items() if v is not None and v != before.get(fn)}
        if len(new) != len(after):
            reused = (prior or recorded)
            if reused and reused.new_versions:
                new = dict(reused.new_versions)  # a resumed deploy whose command had already published
            else:
                missing = sorted(set(after) - set(new))
                self.failure = f"provider error: the deploy command published no new version of {', '.join(missing)}"
                return
        self.record.new_versions = new
        self.ledger.put(self.record)  # a run killed from here on still knows the versions
        self.out(f"llamadeploy: published versions {new} (old {self.record.old_versions}); new version at "
                 f"{'100%' if self.stage_policy.weight == 1.0 else '0%'}")

    def _operation(self, action: str) -> Any:
        """preflight / backup / migrate / restore: the operations module does the work."""
        import importlib

        assert self.context is None
        ctx = StageContext(
            env=self.env, stage=self.stage, release=self.release, policy_dir=str(self.settings.policy_dir),
            old_versions=self.record.old_versions if self.record else {},
            new_versions=self.record.new_versions if self.record else {},
            approver=self.decision.approver if self.decision else None, policy_hash=self.loaded.sha256,
            run_id=self.run_id, artifacts_dir=str(self.run_dir),
            aws=self.aws.to_json(),
            targets=self.targets,
        )
        ops = importlib.import_module("pytest_llamadeploy.ops")
        result = ops.run_action(action, ctx, self.ledger, self.settings)
        self.steps.append({"name": action, "start": time.time(), "stop": time.time(), "status": "passed"})
        return result

    # -------------------------------------------------------------------- bake

    def bake(self, probe: Callable[[], tuple[bool, str]] | None = None) -> None:
        """Hold for the stage's bake under the watch; a breach rolls back at once (from the watch thread)."""
        sp = self.stage_policy
        if self.failure is not None or self.context is None:
            return
        if not sp.watch and sp.bake <= 0:
            return
        started = self.context.traffic_moved_at or now()
        if sp.watch:
            from .metrics.watch import BakeWatch

            assert self.decision
            self.watch = BakeWatch(
                cloudwatch=self.aws.client("cloudwatch"), policy=self.policy,
                functions=self.policy.service.functions, alias=self.policy.service.alias,
                old_versions=self.record.old_versions if self.record else {},
                new_versions=self.record.new_versions if self.record else {},
                started_at=started, probe=probe, on_breach=self._on_breach, out=self.progress,
            )
            self.watch.start()
            self.out(f"llamadeploy: baking {sp.bake:g}s with the watch on ({len(self.policy.rollback_triggers)} rollback triggers)")
            outcome = self.watch.wait(sp.bake)
            if outcome is not None and self.failure is None:
                self.failure = self._breach_text(outcome)
        else:
            self.out(f"llamadeploy: baking {sp.bake:g}s")
            threading.Event().wait(sp.bake)  # the policy's hold time itself, not a stand-in for a condition
        self.context.bake_ended_at = now()
        try:  # a long bake must not let the lease lapse before the suites and the verdict
            self.ledger.renew_lock(self.env, self.run_id, self.policy.ledger.lease)
        except Exception as exc:
            self.failure = self.failure or f"provider error: lost the lock of {self.env} during the bake: {exc}"
        if self.watch is not None:
            self.context.watch["bake"] = self._evidence()
        self.save_context()

    @staticmethod
    def _breach_text(breach: Any) -> str:
        kind = getattr(breach, "kind", "threshold")
        prefix = {"threshold": "rollback triggered", "probe": "probe failed", "provider": "provider error",
                  "inconclusive": "inconclusive"}.get(kind, "rollback triggered")
        return f"{prefix}: {getattr(breach, 'message', breach)}"

    def _on_breach(self, breach: Any) -> None:
        """Called from the watch thread at the first breach: roll back now, not at the end of the bake."""
        text = self._breach_text(breach)
        self.failure = self.failure or text
        if self.policy.rollback_on_failure:
            self.rollback(text)

    def _evidence(self) -> dict[str, Any]:
        try:
            return self.watch.evidence() if self.watch is not None else {}
        except Exception as exc:
            return {"error": str(exc)}

    # ---------------------------------------------------------------- rollback

    def _rollback_to(self) -> dict[str, str] | None:
        """Where a failed stage sends traffic: the versions that served before the release."""
        if not self.record:
            return None
        if self.stage_policy.action == "rollback":
            return None  # a failed rollback is not rolled back again; a person must look
        if self.stage_policy.action in _MOVES or self.stage_policy.action == "none":
            old = self.record.old_versions
            # verify of a release with no deploy record sees old == new: "rolling back" to
            # what already serves would move nothing and report a rollback that never was.
            if not old or dict(old) == dict(self.record.new_versions or {}):
                return None
            return dict(old)
        return None

    def rollback(self, reason: str) -> bool:
        """Idempotent; safe from any thread. Returns True if traffic is (now) on the old version."""
        with self._rollback_lock:
            if self.rolled_back:
                return True
            to = self._rollback_to()
            if not to:
                return False
            started = time.time()
            try:
                before = self.driver.read()
                after = self.driver.apply(rollback_target(to))
            except Exception as exc:
                self.rollback_detail = {"ok": False, "error": redact(str(exc)), "reason": reason, "at": iso(time.time())}
                self.out(f"llamadeploy: ROLLBACK FAILED: {exc}")
                return False
            self.rolled_back = True
            try:  # the preview stage must not keep serving the version just rolled back from
                self._point_preview(to, "rolled back")
            except Exception as exc:  # recorded; users' traffic is what the rollback had to restore
                self.out(f"llamadeploy: could not point the preview alias back at {to}: {redact(str(exc))}")
            self.rollback_detail = {
                "ok": True, "reason": reason, "at": iso(time.time()), "seconds": round(time.time() - started, 3),
                "before": {fn: s.to_json() for fn, s in before.items()},
                "after": {fn: s.to_json() for fn, s in after.items()},
            }
            self.steps.append({"name": f"rollback to {to}", "start": started, "stop": time.time(), "status": "passed",
                               "reason": reason})
            self.out(f"llamadeploy: rolled back: {self._describe_target(after)} ({reason})")
            if self.record is not None:
                self.record.details["rollback"] = self.rollback_detail
                self.ledger.put(self.record)
            self._notify("rollback")
            return True

    # ------------------------------------------------------------------ verdict

    def finish(self, failed_tests: list[str], ran_tests: int, interrupted: str | None = None) -> tuple[str, str]:
        """Verdict: (status, reason). Rolls back on failure when the policy says so."""
        assert self.record is not None
        if self.watch is not None:
            self.watch.stop()
            if self.context is not None:
                self.context.watch["bake"] = self._evidence()
        reason = self.failure or ""
        if not reason and failed_tests:
            shown = "; ".join(failed_tests[:5]) + (f"; and {len(failed_tests) - 5} more" if len(failed_tests) > 5 else "")
            reason = f"{_category_of(failed_tests)} {len(failed_tests)} gate test(s) failed: {shown}"
        if not reason and interrupted:
            reason = f"inconclusive: the run was interrupted ({interrupted})"
        if not reason and self.stage_policy.suites and ran_tests == 0:
            reason = (f"inconclusive: no gate test of suites {', '.join(self.stage_policy.suites)} ran "
                      "(check -k/-m filters and the test paths)")
        if not reason:
            status = "passed"
        elif self.policy.rollback_on_failure and self.rollback(reason):
            status = "rolled_back"
        else:
            status = "failed"
        if status != "passed" and self.stage_policy.action in _MOVES and not self.rolled_back and self._rollback_to():
            reason += " (rollback_on_failure is off: traffic left as it is)" if not self.policy.rollback_on_failure else ""
        elif status == "failed" and self.stage_policy.action == "none" and self._rollback_to() is None:
            reason += (f" (no earlier version is recorded for release {self.release or '(none)'}: nothing to roll "
                       "back to, traffic left on what serves)")
        self.record.status = status
        self.record.reason = redact(reason)
        self.record.ended_at = now()
        self.record.weights_after = {fn: s.to_json() for fn, s in self._read_safely().items()}
        if failed_tests:
            self.record.details["failed_tests"] = [redact(t) for t in failed_tests[:50]]
        self.ledger.put(self.record)
        if status in ("passed", "rolled_back") and self.stage_policy.action == "rollback":
            for rec in self.decision.leftovers if self.decision else []:
                rec.status, rec.ended_at = "aborted", now()
                rec.reason = f"unfinished run resolved by rollback run {self.run_id}"
                self.ledger.put(rec)
        if self.decision and self.decision.resume is not None and self.decision.resume.run_id != self.run_id:
            self.record.details["resolved"] = f"resumed unfinished run {self.decision.resume.run_id}"
            self.ledger.put(self.record)
        self._notify("pass" if status == "passed" else "fail")
        try:
            self.ledger.release_lock(self.env, self.run_id)
        except Exception as exc:
            self.out(f"llamadeploy: could not release the lock of {self.env}: {exc}")
        return status, self.record.reason

    def abort_before_tests(self, reason: str) -> None:
        """A failure in the controller before any test: keep the reason for the verdict."""
        self.failure = self.failure or reason

    def _notify(self, event: str) -> None:
        if self.record is None:
            return
        record = json.loads(redact(json.dumps(self.record.to_json(), default=str)))
        try:
            self.hook.pytest_llamadeploy_notify(event=event, record=record)
        except Exception as exc:  # a notifier must never stop a rollback
            self.out(f"llamadeploy: notifier failed on {event}: {exc}")

    def record_json(self) -> dict[str, Any]:
        return self.record.to_json() if self.record else {}

    def is_final(self) -> bool:
        return bool(self.record and self.record.status in FINAL)


#: Verdict categories, most specific first (reporting/categories.py matches them).
_CATEGORIES = ("inconclusive:", "probe failed:", "provider error:", "rollback triggered:", "threshold breached:")


def _category_of(failures: list[str]) -> str:
    """The category the failing gate tests name themselves (their messages carry the prefix)."""
    for prefix in _CATEGORIES:
        if any(prefix in f for f in failures):
            return prefix
    return "threshold breached:"


def context_path(run_dir: Path) -> Path:
    return run_dir / "context.json"
