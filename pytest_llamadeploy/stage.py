"""The stage runner: decide, check preconditions, act, bake under the watch, give the verdict.

Everything a stage will do is decided (``decide``) before anything changes;
``--plan`` prints that decision and stops there. A refused stage raises
:class:`Refused` before the lock is taken or the alias touched.

Lifecycle and its guarantees:

- ``start``: lock (taken over only per ``lease.py``), preconditions checked again
  under the lock, heartbeat started, ``started`` record. A failure releases the lock.
- ``act`` / ``bake``: every traffic move is preceded by a lease check; every record
  write is fenced on the lock (``ledger.py``). A run that lost its lock stops acting.
- ``rollback``: only traffic this release put there (a function serving any other
  version is left alone, and the verdict says so); each function retried with
  backoff until ``rollback_deadline``; what was and was not restored is recorded
  per function, and a rollback that could not finish is the status
  ``rollback_failed``, which marks the env as needing attention until a
  ``--stage=rollback`` run repairs it.
- ``finish``: the verdict is written with retries; the lock is released with
  retries; :meth:`StageRunner.exit_code` says what the process must exit with.

Observed, not acted on: under ``--observe`` (and for a rule with ``observe: true``) a breach is
recorded in ``details.observed`` and reported, and moves nothing (metrics/watch.py). With
``watch.on_inconclusive: pause`` an inconclusive watch ends the stage ``paused`` (exit 6), traffic
left where the stage put it, until ``llamadeploy decide`` (judgement.py) promotes or rolls back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .aws import AwsConfig, aws_config
from .context import StageContext
from .decide import MOVES, Decider, Decision, Precondition, Refused, describe_states
from .interrupt import Interrupts
from .lease import Heartbeat, observe_lapse
from .ledger import (
    FINAL,
    LeaseLost,
    Ledger,
    LedgerConflict,
    LockHeld,
    LockInfo,
    StageRecord,
    iso,
    new_run_id,
    now,
    open_ledger,
    this_owner,
)
from .options import Settings
from .policy import LoadedPolicy
from .redact import redact, redact_data
from .traffic import (
    RELEASE_VARIABLE,
    AliasState,
    LambdaAliasDriver,
    RestoreReport,
    TrafficError,
    changed_functions,
    describe_release_scope,
    foreign_traffic,
    promote_target,
    restore_each,
    rollback_target,
)

__all__ = ["Decision", "Precondition", "Refused", "StageRunner", "context_path"]

class LostLock(Exception):
    """This run no longer holds the env's lock: it must not act."""


#: The exit code of a stage that ended ``paused`` (README's table): neither passed (0) nor failed (1).
PAUSED_EXIT = 6

#: Backoff between attempts to write the verdict and to release the lock (seconds).
_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)


class StageRunner:
    def __init__(self, settings: Settings, loaded: LoadedPolicy, hook: Any, out: Callable[[str], None],
                 progress: Callable[[str, bool], None] | None = None, interrupts: Interrupts | None = None):
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
        from .metrics.providers import NoProvider, metric_providers

        try:  # every source's provider (plugins' too) before anything moves: a missing one is a usage error
            self.metrics = metric_providers(self.policy, lambda: self.aws.client("cloudwatch"), hook)
        except NoProvider as exc:
            import pytest

            raise pytest.UsageError(f"{self.loaded.files[-1]}: {exc}") from None
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
        #: Signals received (installed by the plugin on the controller); shields are no-ops without it.
        self.interrupts = interrupts or Interrupts()
        #: What the run is doing now, for the verdict of an interrupted run.
        self.step = "decision"
        self.heartbeat: Heartbeat | None = None
        self.lease_lost: str | None = None
        self.rollback_failed = False
        self.verdict_unrecorded: str | None = None
        self.lock_unreleased: str | None = None
        self._takeover_reason = ""
        self._watched_until = 0.0
        self._rolling_back = False
        self._bake_stop = threading.Event()
        self._lock_began = 0.0
        #: Why the stage waits for a human (``watch.on_inconclusive: pause``): it then ends ``paused``.
        self.awaiting: str | None = None
        if hasattr(self.driver, "on_write"):
            self.driver.on_write = self._on_alias_write

    # ------------------------------------------------------------------ decide

    def decide(self) -> Decision:
        """Read-only: what this stage would do, and whether it may (decide.py)."""
        decider = Decider(settings=self.settings, policy=self.policy, stage=self.stage, release=self.release,
                          driver=self.driver, ledger=self.ledger, run_id=self.run_id,
                          cloudwatch=self.aws.client("cloudwatch") if self.stage_policy.action == "preflight" else None)
        self.decision = decider.decide()
        self.targets = decider.targets
        return self.decision

    def _deploy_record(self) -> StageRecord | None:
        return self.ledger.get(self.env, self.release, "deploy") if self.release else None

    # ------------------------------------------------------------------- start

    def start(self) -> None:
        """Lock, preconditions again under the lock, heartbeat, ``started`` record; on any failure the lock is let go."""
        decision = self.decision or self.decide()
        if not decision.ok:
            raise Refused(decision.problems())
        lease = float(self.policy.ledger.lease)
        if not lease > 0:
            raise Refused([f"precondition lease not met: ledger.lease is {lease:g}s; a lease must cover the time "
                           "between two renewals (the heartbeat renews every third of it)"])
        self.step = "lock and started record"
        # Shielded: a signal between taking the lock and writing `started` must not leave a lock nobody records.
        with self.interrupts.shield(raise_after=False):
            taken = self.take_lock(lease)
            try:
                self._checkpoint("lock_acquired")
                recheck = self.decide()  # what we decided on may have changed before the lock was ours
                if not recheck.ok:
                    raise Refused(["the preconditions changed while the lock was being taken:", *recheck.problems()])
                decision = recheck
                self.start_heartbeat(lease, taken)
                self.record = StageRecord(
                    env=self.env, release=self.release, stage=self.stage, status="started", run_id=self.run_id,
                    owner=this_owner(), started_at=now(), approver=decision.approver, policy_hash=self.loaded.sha256,
                    weights_before={fn: s.to_json() for fn, s in decision.current.items()},
                    old_versions=decision.old_versions, new_versions=decision.new_versions,
                    details={"resumed_run": decision.resume.run_id} if decision.resume else {},
                )
                if self.settings.narrowed:
                    self.record.details["narrowed"] = list(self.settings.narrowed)
                if self.settings.emergency:
                    self.record.details["emergency_reason"] = self.settings.reason
                elif self.settings.reason:
                    self.record.details["reason"] = self.settings.reason
                self._put(self.record)
            except BaseException:
                self.record = None
                self._let_go()
                raise
        self._checkpoint("started")
        self._notify("start")
        self.out(f"llamadeploy: {self.stage} of {self.release or '(no release)'} in {self.env} started "
                 f"(run {self.run_id}, ledger {self.ledger.describe()})")

    def take_lock(self, lease: float) -> LockInfo | None:
        """Take the env's lock (taken over only per lease.py); the stale lock taken over, if any; else Refused."""
        began = time.monotonic()
        try:
            taken = self.ledger.acquire_lock(self.env, self.run_id, lease, stage=self.stage,
                                             release=self.release, observe=self._observe_lapse)
        except LockHeld as exc:
            raise Refused([f"precondition lock not met: {exc}"]) from None
        # The lease counts from the conditional write, which follows any lease-long watch of a lapsed lock.
        self._lock_began = max(began, self._watched_until)
        return taken

    def start_heartbeat(self, lease: float, taken: LockInfo | None) -> None:
        """Renew the lock from now on; a lock taken over is said and recorded."""
        self.heartbeat = Heartbeat(lambda: self.ledger.renew_lock(self.env, self.run_id, lease), lease,
                                   on_lost=self._on_lease_lost, conflict=LedgerConflict,
                                   acquired_at=self._lock_began).start()
        if taken is not None:
            why = taken.holder_gone() or self._takeover_reason or "its lease lapsed"
            self.out(f"llamadeploy: took over the lock of {self.env}: {taken.describe()} ({why})")
            self.ledger.put_artifact(self.env, self.release, "lock_takeover",
                                     {"previous": taken.__dict__, "reason": why, "by": this_owner(),
                                      "run_id": self.run_id})

    def _observe_lapse(self, lock: LockInfo) -> str | None:
        reason = observe_lapse(lambda: self.ledger.current_lock(self.env), lock, out=self.out,
                               cancelled=lambda: bool(self.interrupts.received))
        self._takeover_reason = reason or ""
        self._watched_until = time.monotonic()
        return reason

    def _let_go(self) -> None:
        """Stop renewing and release the lock (a start that failed); errors are reported, not raised."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        try:
            self.ledger.release_lock(self.env, self.run_id)
        except Exception as exc:
            self.out(f"llamadeploy: could not release the lock of {self.env}: {exc}; it lapses with its lease")

    # ------------------------------------------------------------------ fencing

    def _on_lease_lost(self, reason: str) -> None:
        """From the heartbeat thread (or a fenced write): stop acting, end the bake."""
        if self.lease_lost is not None:
            return
        self.lease_lost = reason
        self.out(f"llamadeploy: LOST THE LOCK of {self.env}: {reason}; this run stops acting (no traffic move, "
                 "no record write from now on)")
        self._bake_stop.set()
        if self.watch is not None:
            self.watch.stop()

    def _lease_problem(self) -> str | None:
        if self.lease_lost is None and self.heartbeat is not None:
            self.heartbeat.check()
        return self.lease_lost

    def _ensure_lease(self) -> None:
        problem = self._lease_problem()
        if problem is not None:
            raise LostLock(problem)

    def _put(self, record: StageRecord) -> None:
        """A record write that goes through only while this run holds the lock."""
        try:
            self.ledger.put(record, fence=self.run_id)
        except LeaseLost as exc:
            self._on_lease_lost(str(exc))
            raise

    def _checkpoint(self, name: str) -> None:
        try:
            self.hook.pytest_llamadeploy_checkpoint(name=name, run_id=self.run_id)
        except Exception as exc:  # an observer must never change the stage
            self.out(f"llamadeploy: checkpoint hook failed at {name}: {exc}")

    def _on_alias_write(self, function: str) -> None:
        self._checkpoint(f"{'rollback_written' if self._rolling_back else 'alias_written'}:{function}")

    # --------------------------------------------------------------------- act

    def act(self) -> StageContext:
        """Perform the action; a failure is recorded in ``self.failure`` (the verdict rolls back)."""
        assert self.decision and self.record
        d, sp = self.decision, self.stage_policy
        moved_at: float | None = None
        probe_direct = False
        action_result: Any = None
        moves = sp.action in (*MOVES, "rollback")
        try:
            self._ensure_lease()
            if sp.action == "deploy":
                probe_direct = sp.weight != 1.0
                self.step = "deploy command"
                self._deploy()
                if self.failure is None:
                    self._point_preview(self.record.new_versions, "the release under test")
                if self.failure is None and sp.weight == 1.0:
                    self.step = "promote"
                    self._apply(promote_target(self.record.new_versions), "promote (all at once)")
                    moved_at = now()
            elif sp.action in ("shift", "promote"):
                assert d.target is not None
                self.step = sp.action
                self._apply(d.target, f"{sp.action} to {self._describe_target(d.target)}")
                moved_at = now()
                if self.failure is None and self.record is not None and self.record.new_versions:
                    # A shift re-run after a rollback (which points the preview alias back): the bake's
                    # event check subscribes through the preview stage, to the release under test.
                    # After users' traffic moved, and best effort: the probes check where it points.
                    try:
                        self._point_preview(self.record.new_versions, "the release under test", only_if_moved=True)
                    except Exception as exc:  # noqa: BLE001 - the event check is then skipped, and says so
                        self.out(f"llamadeploy: could not point the preview alias at the release: {redact(str(exc))}")
            elif sp.action == "rollback":
                assert d.target is not None
                self.step = "rollback"
                why = next((c.detail for c in d.preconditions if c.name == "rollback target" and c.ok), "")
                report = self._restore(d.target, f"--stage=rollback: {self._describe_target(d.target)}"
                                       + (f"; {why}" if why else ""))
                if report is None or not report.ok:
                    self.failure = self.failure or self._restore_failure_text()
                moved_at = now()
            elif sp.action in ("preflight", "backup", "migrate", "restore"):
                self.step = sp.action
                action_result = self._operation(sp.action)
        except LostLock as exc:
            self.failure = self.failure or f"lost the lock: {exc}"
        except TrafficError as exc:
            self.failure = f"provider error: {exc}"
        except Exception as exc:  # an unexpected error must still lead to a verdict and a rollback
            self.failure = f"provider error: {type(exc).__name__}: {redact(str(exc))}"
        alias_after: dict[str, AliasState] = {}
        try:
            alias_after = self._read_retrying() if moves else self._read_safely()
        except Exception as exc:  # where traffic is must be known before anything is judged on it
            self.failure = self.failure or (f"provider error: could not read the alias after the {sp.action}: "
                                            f"{type(exc).__name__}: {redact(str(exc))}")
        self.context = StageContext(
            env=self.env, stage=self.stage, release=self.release, policy_dir=str(self.settings.policy_dir),
            old_versions=self.record.old_versions, new_versions=self.record.new_versions,
            alias_after={fn: s.to_json() for fn, s in alias_after.items()},
            traffic_moved_at=moved_at, probe_new_directly=probe_direct, approver=d.approver,
            policy_hash=self.loaded.sha256, run_id=self.run_id, artifacts_dir=str(self.run_dir),
            aws=self.aws.to_json(),
            targets=self.targets,
        )
        if action_result is not None:
            self.context.watch["action_result"] = action_result
        self.save_context()
        return self.context

    def _point_preview(self, versions: dict[str, str], why: str, only_if_moved: bool = False) -> None:
        """Point the preview alias at ``versions`` (the preview stage's integrations call it).

        ``only_if_moved``: read it first and leave it alone when it already points there (a
        shift must not write an alias it does not need to).
        """
        if not versions:
            return
        if only_if_moved and self.preview.read() == promote_target(versions):
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

    def _read_retrying(self) -> dict[str, AliasState]:
        """The alias of every function, retried (beyond botocore's own retries) before giving up."""
        for delay in (*_RETRY_DELAYS[:2], None):
            try:
                return self.driver.read()
            except Exception:
                if delay is None:
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable")

    def save_context(self) -> None:
        assert self.context is not None
        self.context.save(self.run_dir / "context.json")

    @staticmethod
    def _describe_target(target: dict[str, AliasState]) -> str:
        return describe_states(target)

    def _apply(self, target: dict[str, AliasState], label: str) -> None:
        self._ensure_lease()
        started = time.time()
        # Shielded: a signal waits until every function moved (or was put back), then ends the stage.
        with self.interrupts.shield():
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
        self._ensure_lease()  # a deploy command may run for long: still ours?
        published = getattr(self.driver, "published_versions", None)
        if published is not None:
            new = self._release_versions(published(), before)
            if new is None:
                return
        else:  # a traffic driver without release markers: the versions that changed
            after = self.driver.latest_versions()
            new = {fn: v for fn, v in after.items() if v is not None and v != before.get(fn)}
            reused = (prior or recorded)
            if not new and reused and reused.new_versions:
                new = dict(reused.new_versions)  # a resumed deploy whose command had already published
            elif not new:
                self.failure = (f"provider error: the deploy command published no new version of any function "
                                f"({', '.join(after)})")
                return
            new = self._keep_unchanged(new)
        self.record.new_versions = new
        self._put(self.record)  # a run killed from here on still knows the versions
        self.out(f"llamadeploy: release {self.release}: "
                 f"{describe_release_scope(self.record.old_versions, new)}; new versions at "
                 f"{'100%' if self.stage_policy.weight == 1.0 else '0%'}")

    def _keep_unchanged(self, new: dict[str, str]) -> dict[str, str]:
        """A partial release: each function it published no version of keeps the version that serves it.

        Its "new" version is its old one, so every later stage leaves it where it is
        (shift_target, promote, rollback) and the verdict names it as unchanged.
        """
        assert self.record is not None
        return {fn: new.get(fn) or str(self.record.old_versions[fn]) for fn in self.policy.service.functions}

    def _release_versions(self, published: dict[str, Any], before: dict[str, str | None]) -> dict[str, str] | None:
        """Each function's newest version that names this release; a version someone else published is never adopted."""
        new: dict[str, str] = {}
        missing: list[str] = []
        foreign: list[str] = []
        for fn in self.policy.service.functions:
            listed = published.get(fn, [])
            mine = [v for v in listed if v.names(self.release)]
            if mine:
                new[fn] = mine[-1].version
            else:
                missing.append(fn)
            since = int(before.get(fn) or 0)
            others = [v.describe() for v in listed if int(v.version) > since and not v.names(self.release)]
            if others:
                foreign.append(f"{fn} {', '.join(others)}")
        if foreign:
            self.out(f"llamadeploy: published meanwhile but not release {self.release} (not adopted): {'; '.join(foreign)}")
        if not new:
            newest = "; ".join(f"{fn} newest {published[fn][-1].describe()}" for fn in missing if published.get(fn))
            self.failure = (
                f"provider error: the deploy command published no version of {', '.join(missing)} that names release "
                f"{self.release} ({newest or 'no version published'}). The deploy contract: each published version's "
                f"Description contains {self.release!r} as a word, or its {RELEASE_VARIABLE} variable is "
                f"{self.release!r}; a version without it is never adopted as the release")
            return None
        if missing:  # a partial release: those functions keep what serves them
            self.out(f"llamadeploy: release {self.release} publishes no version of {', '.join(missing)}: "
                     "left on the version that serves it")
        return self._keep_unchanged(new)

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
        self.step = "bake"
        started = self.context.traffic_moved_at or now()
        if sp.watch:
            from .metrics.watch import BakeWatch

            assert self.decision
            self.watch = BakeWatch(
                cloudwatch=self.metrics, policy=self.policy,
                functions=self.policy.service.functions, alias=self.policy.service.alias,
                old_versions=self.record.old_versions if self.record else {},
                new_versions=self.record.new_versions if self.record else {},
                started_at=started, probe=probe, on_breach=self._on_breach, out=self.progress,
                baseline=sp.action == "shift", observe=self.settings.observe,
            )
            self.watch.start()
            observed = "every breach OBSERVED ONLY (--observe), none acted on" if self.settings.observe else ", ".join(
                f"{n} observed only" for n in self.watch.evidence()["observed_rules"])
            self.out(f"llamadeploy: baking {sp.bake:g}s with the watch on ({len(self.policy.rollback_triggers)} rollback "
                     f"triggers{'; ' + observed if observed else ''})")
            self._checkpoint("baking")
            if self.lease_lost is not None:
                self.watch.stop()
            outcome = self.watch.wait(sp.bake)
            if outcome is not None and self.failure is None and not self._pauses(outcome):
                self.failure = self._breach_text(outcome)
        else:
            self.out(f"llamadeploy: baking {sp.bake:g}s")
            self._checkpoint("baking")
            self._bake_stop.wait(sp.bake)  # the policy's hold time itself; ended early only by a lost lock
        self.context.bake_ended_at = now()
        problem = self._lease_problem()
        if problem is not None:
            self.failure = self.failure or f"lost the lock of {self.env} during the bake: {problem}"
        if self.watch is not None:
            self.context.watch["bake"] = self._evidence()
        self.save_context()

    @staticmethod
    def _breach_text(breach: Any) -> str:
        kind = getattr(breach, "kind", "threshold")
        prefix = {"threshold": "rollback triggered", "probe": "probe failed", "provider": "provider error",
                  "inconclusive": "inconclusive"}.get(kind, "rollback triggered")
        message = str(getattr(breach, "message", breach))
        return message if message.startswith(f"{prefix}:") else f"{prefix}: {message}"

    def _pauses(self, breach: Any) -> bool:
        """An inconclusive watch waits for a human (``watch.on_inconclusive: pause``) instead of failing."""
        if self.policy.watch.on_inconclusive != "pause" or getattr(breach, "kind", "") != "inconclusive":
            return False
        self.awaiting = self.awaiting or self._breach_text(breach)
        return True

    def _on_breach(self, breach: Any) -> None:
        """Called from the watch thread at the first breach: roll back now, not at the end of the bake."""
        text = self._breach_text(breach)
        if self._pauses(breach):
            self.out(f"llamadeploy: PAUSED: {text}; traffic stays where the stage put it (watch.on_inconclusive: "
                     "pause): the stage ends awaiting a decision")
            return
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
            return None  # a failed rollback stage is not rolled back again; its own retries are over
        if self.stage_policy.action in MOVES or self.stage_policy.action == "none":
            old = self.record.old_versions
            # verify of a release with no deploy record sees old == new, and a deploy whose command
            # failed has no new version at all: "rolling back" would move nothing and report (and
            # notify) a rollback that never was.
            if not old or not self.record.new_versions or dict(old) == dict(self.record.new_versions):
                return None
            return dict(old)
        return None

    def rollback(self, reason: str) -> bool:
        """Idempotent; safe from any thread. Returns True if traffic is (now) on the old version.

        Moves only traffic this release put there: a function serving a version that is
        neither the release's old nor its new one (a later release promoted since, or
        someone moved the alias by hand) is left alone, and the verdict says so; the
        functions still serving this release are rolled back. When none is (verify of an
        older release), nothing is moved.
        """
        with self._rollback_lock:
            if self.rolled_back:
                return True
            if self.rollback_detail is not None:
                return False  # refused, or failed after its retries: once is the answer
            to = self._rollback_to()
            if not to:
                return False
            if self._lease_problem() is not None:
                self.rollback_detail = {"ok": False, "skipped": f"this run lost the lock: {self.lease_lost}",
                                        "reason": reason, "at": iso(time.time())}
                return False
            try:
                current: dict[str, AliasState] | None = self._read_retrying()
            except Exception:
                current = None  # unknown: the rollback's own reads retry until its deadline
            left_alone = None
            if current is not None and self.record is not None:
                foreign = foreign_traffic(current, to, self.record.new_versions)
                if foreign:
                    serving = "; ".join(f"{fn} serves {d}" for fn, d in foreign.items())
                    not_mine = (f"not rolled back: {serving}, which release {self.release or '(none)'} "
                                f"({self.record.new_versions} over {to}) did not put there; traffic left as it is")
                    # A hand-moved function does not keep the failed release on the others (seen: onchain-api
                    # pointed at a hotfix during shift10's bake left onchain-ws serving the failed v2 at 10 %).
                    mine = {fn: v for fn, v in to.items() if fn not in foreign and fn in current
                            and current[fn].share_of(str(self.record.new_versions.get(fn))) > 0}
                    if not mine:
                        self.rollback_detail = {"ok": False, "refused": not_mine, "reason": reason,
                                                "at": iso(time.time()),
                                                "before": {fn: st.to_json() for fn, st in current.items()}}
                        self.record.details["rollback"] = self.rollback_detail
                        self.out(f"llamadeploy: {not_mine}")
                        return False
                    to = mine
                    left_alone = (not_mine.replace("not rolled back:", "left alone:", 1)
                                  .replace("traffic left as it is", f"rolled back {', '.join(mine)} only"))
                    self.out(f"llamadeploy: {left_alone}")
            report = self._restore(rollback_target(to), reason)
            if report is not None and left_alone is not None and self.rollback_detail is not None:
                self.rollback_detail["left_alone"] = left_alone
            return report is not None and report.ok

    def _restore(self, target: dict[str, AliasState], reason: str) -> RestoreReport | None:
        """Move traffic back function by function, retried until the policy's rollback_deadline; record it all."""
        taken = self._lock_taken()
        if taken is not None:
            self._on_lease_lost(taken)
        if self._lease_problem() is not None:
            self.rollback_detail = {"ok": False, "skipped": f"this run lost the lock: {self.lease_lost}",
                                    "reason": reason, "at": iso(time.time())}
            return None
        started = time.time()
        self._checkpoint("rollback_start")
        # Shielded: a second Ctrl-C or SIGTERM must not abort a rollback half-way.
        with self.interrupts.shield():
            self._rolling_back = True
            try:
                report = restore_each(self.driver, target, deadline=time.monotonic() + self.policy.rollback_deadline,
                                      stop=self._lease_problem, redact=redact)
            finally:
                self._rolling_back = False
            self._checkpoint("rollback_applied")
            detail: dict[str, Any] = {
                "ok": report.ok, "reason": reason, "at": iso(time.time()), "seconds": report.seconds,
                "before": {fn: f["before"] for fn, f in report.functions.items()},
                "after": {fn: f["after"] for fn, f in report.functions.items()},
                "functions": report.functions,
            }
            self.rollback_detail = detail
            label = f"rollback to {({fn: st.version for fn, st in target.items()})}"
            self.steps.append({"name": label, "start": started, "stop": time.time(),
                               "status": "passed" if report.ok else "failed", "reason": reason})
            if report.ok:
                self.rolled_back = True
                self.out(f"llamadeploy: rolled back: {self._describe_target(target)} ({reason})")
                try:  # the preview stage must not keep serving the version just rolled back from
                    self._point_preview({fn: st.version for fn, st in target.items()}, "rolled back")
                except Exception as exc:  # recorded; users' traffic is what the rollback had to restore
                    self.out(f"llamadeploy: could not point the preview alias back: {redact(str(exc))}")
            else:
                self.rollback_failed = True
                detail["repair"] = self._repair_command(target)
                problems = "; ".join(f"{fn}: {err}" for fn, err in report.failed().items())
                self.out(f"llamadeploy: ROLLBACK FAILED after {report.seconds:g}s of retries ({problems}); "
                         f"repair with `{detail['repair']}`")
            if self.record is not None:
                self.record.details["rollback"] = detail
                try:
                    self._put(self.record)  # what moved is on record even if this process dies now
                except Exception as exc:  # the verdict's write retries; the rollback itself is done
                    self.out(f"llamadeploy: could not record the rollback yet: {exc}")
            self._notify("rollback" if report.ok else "rollback_failed")
        return report

    def _lock_taken(self) -> str | None:
        """Another run's lock, read before traffic moves back (the heartbeat sees a takeover only when it renews)."""
        try:
            lock = self.ledger.current_lock(self.env)
        except Exception:  # unknown: the rollback goes on, and its fenced record write still tells
            return None
        if lock is not None and lock.run_id != self.run_id:
            return f"the lock of {self.env} is now {lock.describe()}"
        return None

    def _restore_failure_text(self) -> str:
        detail = self.rollback_detail or {}
        if detail.get("skipped"):
            return f"lost the lock: {detail['skipped']}"
        failed = {fn: f.get("error") for fn, f in (detail.get("functions") or {}).items() if not f.get("ok")}
        return "rollback failed: " + "; ".join(f"{fn}: {err}" for fn, err in failed.items())

    def _repair_command(self, target: dict[str, AliasState]) -> str:
        versions = ",".join(f"{fn}={st.version}" for fn, st in target.items())
        command = f"pytest --env={self.env} --stage=rollback"
        if self.release:
            command += f" --release={self.release}"
        command += f" --to-version={versions}"
        if self.policy.approval.required:
            command += " --approved-by=NAME"
        return command

    # ------------------------------------------------------------------ verdict

    def finish(self, failed_tests: list[str], ran_tests: int, interrupted: str | None = None, *,
               passed_by_suite: dict[str, int] | None = None, observed_tests: list[str] | None = None,
               passed_reason: str = "") -> tuple[str, str]:
        """Verdict: (status, reason). Rolls back on failure when the policy says so; never raises.

        ``passed_by_suite``: gate tests passed per suite; a suite of the stage without one
        (not collected, deselected, every test skipped) makes the stage inconclusive.
        ``observed_tests``: analysis tests that failed observed only (observe.py): reported, not failures.
        ``passed_reason``: recorded as the reason when the stage passes (a decision: judgement.py).
        """
        assert self.record is not None
        self.step = "verdict"
        if self.watch is not None:
            self.watch.stop()
            if self.context is not None:
                self.context.watch["bake"] = self._evidence()
        if self._lease_problem() is not None:
            return self._finish_without_lock(self.failure or "")
        reason = self.failure or ""
        if not reason and failed_tests:
            shown = "; ".join(failed_tests[:5]) + (f"; and {len(failed_tests) - 5} more" if len(failed_tests) > 5 else "")
            reason = f"{_category_of(failed_tests)} {len(failed_tests)} gate test(s) failed: {shown}"
        if interrupted:
            reason = f"interrupted: {interrupted}" + (f"; {reason}" if reason else "")
        if not reason and self.stage_policy.suites and ran_tests == 0:
            reason = (f"inconclusive: no gate test of suites {', '.join(self.stage_policy.suites)} ran "
                      "(check -k/-m filters and the test paths)")
        elif not reason and self.stage_policy.suites and passed_by_suite is not None:
            missing = [s for s in self.stage_policy.suites if not passed_by_suite.get(s)]
            if missing:
                reason = (f"inconclusive: suite{'s' if len(missing) > 1 else ''} {', '.join(missing)} of stage "
                          f"{self.stage} passed no test (not collected, deselected or every test skipped); each "
                          f"suite the policy lists ({', '.join(self.stage_policy.suites)}) must pass at least one")
        after: dict[str, AliasState] | None = None
        if not reason:
            try:
                after = self._read_retrying()
            except Exception as exc:  # a stage cannot pass without knowing where its traffic is
                reason = f"provider error: could not read the alias after the stage: {type(exc).__name__}: {exc}"
        reason = self._judged(reason, failed_tests, passed_by_suite)
        if self.rollback_failed:
            status = "rollback_failed"
        elif not reason and self.awaiting:
            status = "paused"
            reason = self._await_decision()
        elif not reason:
            status = "passed"
            reason = passed_reason
        elif (self.policy.rollback_on_failure or self.rolled_back) and self.rollback(reason):
            status = "rolled_back"
        elif self.rollback_failed:
            status = "rollback_failed"
        else:
            status = "failed"
        if self._lease_problem() is not None:
            return self._finish_without_lock(reason)
        observed = self._observed(observed_tests or [])
        if observed is not None and (observed["breaches"] or "observed" not in self.record.details):
            self.record.details["observed"] = observed
            if status == "passed" and observed["breaches"]:
                reason = (f"passed with {len(observed['breaches'])} breach(es) OBSERVED ONLY ({observed['mode']}): "
                          f"not acted on, nothing rolled back; first: {observed['breaches'][0]}"
                          + (f"; {reason}" if reason else ""))
        refused = (self.rollback_detail or {}).get("refused")
        left_alone = (self.rollback_detail or {}).get("left_alone")
        if refused or left_alone:
            reason += f" ({refused or left_alone})"
        elif status not in ("passed", "rollback_failed", "paused") and self.stage_policy.action in MOVES \
                and not self.rolled_back \
                and self._rollback_to() and not self.policy.rollback_on_failure:
            reason += " (rollback_on_failure is off: traffic left as it is)"
        elif status == "failed" and self.stage_policy.action in MOVES and not self.record.new_versions:
            reason += f" (release {self.release} has no published version: nothing was moved, nothing rolled back)"
        elif status == "failed" and self.stage_policy.action == "none" and self._rollback_to() is None:
            reason += (f" (no earlier version is recorded for release {self.release or '(none)'}: nothing to roll "
                       "back to, traffic left on what serves)")
        if status == "rollback_failed":
            repair = (self.rollback_detail or {}).get("repair", "")
            reason += f"; ROLLBACK FAILED ({self._restore_failure_text()}): {self.env} needs attention; repair: `{repair}`"
            self.record.details["needs_attention"] = {"repair": repair, "since": iso(time.time())}
        self.record.status = status
        self.record.reason = redact(reason)
        self.record.ended_at = now()
        if after is None or status != "passed":
            after = self._read_safely()
        self.record.weights_after = {fn: s.to_json() for fn, s in after.items()}
        if failed_tests:
            self.record.details["failed_tests"] = [redact(t) for t in failed_tests[:50]]
        scope = self.release_scope()
        if scope is not None:
            self.record.details["release_scope"] = scope
        if self.decision and self.decision.resume is not None and self.decision.resume.run_id != self.run_id:
            self.record.details["resolved"] = f"resumed unfinished run {self.decision.resume.run_id}"
        self._record_verdict()
        if not self.verdict_unrecorded and status in ("passed", "rolled_back") and self.stage_policy.action == "rollback":
            self._resolve_leftovers()
        self._checkpoint("verdict_recorded")
        self._notify("pass" if status == "passed" else "fail")  # a pause is told as "fail" with status paused
        self._release()
        return status, self.record.reason

    def _judged(self, reason: str, failed_tests: list[str], passed_by_suite: dict[str, int] | None) -> str:
        """The verdict plugins' say (verdict.py), before any rollback or record: a pass may become a failure only."""
        from .verdict import BROKEN_PREFIX, judged, make_verdict

        assert self.record is not None
        hook = self.hook.pytest_llamadeploy_verdict
        if not hook.get_hookimpls():
            return reason
        try:  # finish() never raises; a verdict that cannot be put to its plugins has not been agreed to
            reason, said = judged(make_verdict(self, reason, failed_tests, passed_by_suite), hook)
        except Exception as exc:
            said = [f"not asked: {type(exc).__name__}: {redact(str(exc))}"]
            reason = reason or f"{BROKEN_PREFIX} {said[0]}"
        if said:
            self.record.details["verdict_plugins"] = said
        return reason

    def _observed(self, observed_tests: list[str]) -> dict[str, Any] | None:
        """What was observed and not acted on (``details.observed``), or None when nothing is observe-only."""
        rules = sorted(n for n, r in {**self.policy.rollback_triggers, **self.policy.key_metrics}.items() if r.observe)
        breaches = [str(b.get("message", "")) for b in (self.watch.observed if self.watch is not None else [])]
        breaches += observed_tests
        if not (self.settings.observe or rules or breaches):
            return None
        return {"mode": "--observe: every rule" if self.settings.observe else f"observe: true on {', '.join(rules)}",
                "rules": rules, "acted": False, "breaches": [redact(b) for b in breaches]}

    def _await_decision(self) -> str:
        """The paused stage's reason and ``details.awaiting``: what is awaited and the exact commands."""
        assert self.record is not None
        from .judgement import decide_command

        commands = {choice: decide_command(self.env, self.release, self.stage, choice, self.settings.policy_dir,
                                           approval=self.policy.approval.required)
                    for choice in ("promote", "rollback")}
        self.record.details["awaiting"] = {
            "decision": "promote or roll back (watch.on_inconclusive: pause)", "why": self.awaiting,
            "since": iso(time.time()), "commands": commands}
        return (f"paused: {self.awaiting}; traffic left where {self.stage} put it, awaiting a decision: "
                f"`{commands['promote']}` or `{commands['rollback']}`")

    def _resolve_leftovers(self) -> None:
        """A passed rollback ends the unfinished runs it was told about and clears 'needs attention'."""
        d = self.decision
        for rec in d.leftovers if d else []:
            rec.status, rec.ended_at = "aborted", now()
            rec.reason = f"unfinished run resolved by rollback run {self.run_id}"
            self._put_quietly(rec)
        for rec in d.attention if d else []:
            rec.details["resolved_by"] = f"rollback run {self.run_id} at {iso(time.time())}"
            self._put_quietly(rec)
        for rec in d.paused if d else []:  # a rollback is a decision: the paused stage ends rolled back
            rec.status, rec.ended_at = "rolled_back", now()
            rec.reason = f"{rec.reason}; decided: rolled back by rollback run {self.run_id}"
            rec.details["decision"] = {"decision": "rollback", "by": self.record.approver if self.record else None,
                                       "run_id": self.run_id, "at": iso(time.time()), "pending": False,
                                       "via": f"--stage={self.stage}"}
            self._put_quietly(rec)

    def _put_quietly(self, record: StageRecord) -> None:
        try:
            self._put(record)
        except Exception as exc:
            self.out(f"llamadeploy: could not update {record.stage} of {record.release}: {exc}")

    def _record_verdict(self) -> None:
        """Write the verdict, retrying; what could not be written is said, and the run exits 3."""
        assert self.record is not None
        last: Exception | None = None
        for attempt, delay in enumerate((*_RETRY_DELAYS, None), 1):
            try:
                self._put(self.record)
                self.verdict_unrecorded = None
                return
            except LeaseLost as exc:
                self.verdict_unrecorded = str(exc)
                return
            except Exception as exc:
                last = exc
                if delay is None:
                    break
                self.out(f"llamadeploy: writing the verdict failed (attempt {attempt}): {redact(str(exc))}; "
                         f"retrying in {delay:g}s")
                time.sleep(delay)
        self.verdict_unrecorded = redact(f"{type(last).__name__}: {last}")
        self.out(f"llamadeploy: VERDICT NOT RECORDED in {self.ledger.describe()} after {len(_RETRY_DELAYS) + 1} "
                 f"attempts ({self.verdict_unrecorded}). The ledger still holds this run's `started` record: the next "
                 f"run reports it and asks for it to be resolved. The verdict was: "
                 f"{json.dumps(redact_data(json.loads(json.dumps(self.record.to_json(), default=str))))}")

    def _release(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        last: Exception | None = None
        for delay in (*_RETRY_DELAYS[:3], None):
            try:
                self.ledger.release_lock(self.env, self.run_id)
                self.lock_unreleased = None
                return
            except Exception as exc:
                last = exc
                if delay is not None:
                    time.sleep(delay)
        self.lock_unreleased = redact(f"{type(last).__name__}: {last}")
        self.out(f"llamadeploy: could not release the lock of {self.env} ({self.lock_unreleased}); it is no longer "
                 "renewed: the next run on this host takes it over at once, elsewhere once its lease lapses")

    def _finish_without_lock(self, reason: str) -> tuple[str, str]:
        """This run lost its lock: no rollback, no record write, no release: the env belongs to another run now."""
        assert self.record is not None
        if self.heartbeat is not None:
            self.heartbeat.stop()
        text = (f"lost the lock of {self.env}: {self.lease_lost}. This run stopped acting: after that it moved no "
                "traffic and wrote no record; the run holding the lock now owns the env and its records")
        if reason:
            text += f" (before that: {reason})"
        self.record.status = "lease_lost"  # this process's own account only: the ledger is not ours to write
        self.record.reason = redact(text)
        self.record.ended_at = now()
        self.out(f"llamadeploy: {self.record.reason}")
        self._notify("fail")
        try:  # conditional on our run id: frees a lock that merely lapsed, never another run's
            self.ledger.release_lock(self.env, self.run_id)
        except Exception as exc:
            self.out(f"llamadeploy: could not release the lock of {self.env}: {exc}")
        return self.record.status, self.record.reason

    def exit_code(self) -> int | None:
        """The process's exit code when the verdict needs one of its own (README's table), else None."""
        if self.record is not None and self.record.status == "rollback_failed":
            return 5
        if self.lease_lost or self.verdict_unrecorded or self.lock_unreleased:
            return 3
        if self.interrupts.received:
            return 2
        if self.record is not None and self.record.status == "paused":
            return PAUSED_EXIT
        return None

    def release_scope(self) -> dict[str, Any] | None:
        """Which functions this release moves and which it leaves (a partial release), for the verdict."""
        if self.record is None or self.stage_policy.action not in MOVES or not self.record.new_versions:
            return None
        old, new = self.record.old_versions, self.record.new_versions
        changed = changed_functions(old, new)
        return {"shifted": changed, "unchanged": [fn for fn in new if fn not in changed],
                "summary": describe_release_scope(old, new)}

    def abort_before_tests(self, reason: str) -> None:
        """A failure in the controller before any test: keep the reason for the verdict."""
        self.failure = self.failure or reason

    def _notify(self, event: str) -> None:
        if self.record is None:
            return
        try:  # everything in here: a notice must never stop a rollback
            record = redact_data(json.loads(json.dumps(self.record.to_json(), default=str)))
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
