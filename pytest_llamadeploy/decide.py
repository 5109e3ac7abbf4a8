"""What a stage would do and whether it may: read-only.

``--plan`` prints the :class:`Decision`; ``StageRunner.start`` checks it before
taking the lock and again once the lock is held (what it was decided on may
have changed meanwhile). Nothing here writes to AWS or to the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ledger import Ledger, StageRecord, iso, now
from .options import Settings, approver_from
from .policy import Policy, Stage
from .targets import resolve_targets
from .traffic import AliasState, TrafficError, foreign_traffic, promote_target, rollback_target, shift_target

#: Stages whose action moves traffic and therefore can be rolled back.
MOVES = ("deploy", "shift", "promote")


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
    #: rollback_failed records not yet repaired (the env needs attention).
    attention: list[StageRecord] = field(default_factory=list)
    #: Stages paused awaiting a decision (``llamadeploy decide``) that this rollback stage decides.
    paused: list[StageRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.preconditions)

    def problems(self) -> list[str]:
        return [f"precondition {p.name} not met: {p.detail}" for p in self.preconditions if not p.ok]


def decide_commands(rec: StageRecord) -> tuple[str, str]:
    """The recorded ``llamadeploy decide`` commands of a paused stage: (promote, rollback)."""
    commands = (rec.details.get("awaiting") or {}).get("commands") or {}
    base = f"llamadeploy decide --env {rec.env} --release {rec.release} --stage {rec.stage}"
    return (commands.get("promote") or f"{base} --promote --reason TEXT",
            commands.get("rollback") or f"{base} --rollback --reason TEXT")


def _versions(states: dict[str, AliasState]) -> dict[str, str]:
    return {fn: s.version for fn, s in states.items()}


def describe_states(states: dict[str, AliasState]) -> str:
    return "; ".join(f"{fn}: {s.describe()}" for fn, s in states.items())


class Decider:
    """Reads the alias, the ledger and the lock; decides, never writes."""

    def __init__(self, *, settings: Settings, policy: Policy, stage: str, release: str, driver: Any, ledger: Ledger,
                 run_id: str, cloudwatch: Any = None):
        assert settings.env
        self.settings = settings
        self.policy = policy
        self.env = settings.env
        self.stage = stage
        self.stage_policy = policy.stages[stage]
        self.release = release
        self.driver = driver
        self.ledger = ledger
        self.run_id = run_id
        #: For the preflight's proof of its ``no_data: pass`` rules (ListMetrics, read-only).
        self.cloudwatch = cloudwatch
        #: The targets resolved while deciding (URLs, DSNs), for the runner's context.
        self.targets: dict[str, str] = {}

    def decide(self) -> Decision:
        """What this stage would do, and whether it may; sets ``targets`` (resolved) on the way."""
        policy, sp = self.policy, self.stage_policy
        current = self.driver.read()
        checks: list[Precondition] = []
        old = _versions(current)
        new: dict[str, str] = {}
        target: dict[str, AliasState] | None = None

        if sp.action in MOVES and not self.release:
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

        if sp.action == "preflight" and policy.preflight.prove_names and self.cloudwatch is not None:
            checks.append(self._no_data_pass_proven())

        lock = self.ledger.current_lock(self.env)
        if lock is None:
            checks.append(Precondition("lock", True, f"{self.env} is free"))
        elif lock.run_id == self.run_id:
            checks.append(Precondition("lock", True, f"{self.env} is held by this run"))
        else:
            stale = lock.stale_reason(now())
            checks.append(Precondition("lock", stale is not None,
                                       f"env {self.env!r} is locked: {lock.describe()}"
                                       + (f"; may be taken over: {stale}" if stale else
                                          "; wait for that run, or take over once its lease expires")))

        resume: StageRecord | None = None
        leftovers: list[StageRecord] = []
        records = self.ledger.records(self.env)
        attention = [r for r in records if r.status == "rollback_failed" and not r.details.get("resolved_by")]
        for rec in attention:
            repair = (rec.details.get("needs_attention") or {}).get("repair") or (
                f"pytest --env={self.env} --stage=rollback --release={rec.release} --to-version=N")
            if sp.action == "rollback":
                checks.append(Precondition("needs attention", True,
                                           f"the failed rollback of {rec.stage} of {rec.release} is resolved by this rollback"))
            else:
                functions = (rec.details.get("rollback") or {}).get("functions") or {}
                what = "; ".join(f"{fn} not restored: {f.get('error')}" for fn, f in functions.items()
                                 if not f.get("ok")) or rec.reason[:300]
                checks.append(Precondition(
                    "needs attention", False,
                    f"{self.env} needs attention: the rollback of {rec.stage} of release {rec.release} failed at "
                    f"{iso(rec.ended_at)} and traffic may be split ({what}). Repair it first: `{repair}`"))
        paused: list[StageRecord] = []
        for rec in records:
            if rec.status != "paused":
                continue
            promote, rollback = decide_commands(rec)
            if sp.action == "rollback" and (not self.release or rec.release == self.release):
                paused.append(rec)
                checks.append(Precondition("awaiting decision", True,
                                           f"{rec.stage} of {rec.release} paused awaiting a decision: this rollback "
                                           "decides it (it ends rolled_back)"))
            else:
                checks.append(Precondition(
                    "awaiting decision", False,
                    f"{rec.stage} of release {rec.release} in {self.env} is paused awaiting a decision since "
                    f"{iso(rec.ended_at)} ({rec.reason[:300]}). Decide first: `{promote}` or `{rollback}`"))
        for rec in records:
            if rec.status != "started" or rec.run_id == self.run_id:
                continue
            pending = (rec.details.get("decision") or {}).get("pending")
            if pending and sp.action != "rollback":
                checks.append(Precondition(
                    "unfinished run", False,
                    f"a `llamadeploy decide` ({pending}) of {rec.stage} of release {rec.release} was started by "
                    f"{rec.owner} at {iso(rec.started_at)} and never finished (killed?). Finish it by running it "
                    f"again: `{decide_commands(rec)[0 if pending == 'promote' else 1]}`"))
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
                if to != _versions(current):  # a target that moves traffic: never back onto a known-bad version
                    checks.extend(self._known_bad(to))
                else:
                    # Nothing to move: the record keeps what the rollback that put traffic here rolled back
                    # from (records are one per release and stage: this one may overwrite that one).
                    undone = self._rolled_back_to(to)
                    if undone is not None:
                        old = dict(undone.old_versions)
        else:
            deploy_rec = self._deploy_record()
            if deploy_rec and deploy_rec.new_versions:
                new, old = dict(deploy_rec.new_versions), dict(deploy_rec.old_versions)
            else:
                new = _versions(current)

        return Decision(self.env, self.stage, self.release, sp, current, target, old, new, checks,
                        approver, resume, leftovers, attention, paused)

    def _no_data_pass_proven(self) -> Precondition:
        """A ``no_data: pass`` rule is trusted only where CloudWatch lists its series (ops/proven.py)."""
        from .ops.proven import rule_series, unprovable_no_data_pass

        try:
            refused = unprovable_no_data_pass(rule_series(self.cloudwatch, self.policy))
        except Exception as exc:  # no proof is no proof: say why, change nothing
            return Precondition("no_data: pass proven", False,
                                f"could not list metrics (CloudWatch ListMetrics): {type(exc).__name__}: {exc}")
        if refused:
            return Precondition("no_data: pass proven", False, "; ".join(refused))
        return Precondition("no_data: pass proven", True, "every no_data: pass rule's series is listed by CloudWatch")

    def _deploy_record(self) -> StageRecord | None:
        return self.ledger.get(self.env, self.release, "deploy") if self.release else None

    def _tainted(self) -> dict[tuple[str, str], str]:
        """(function, version) -> why a rollback must not target it: it failed its gate, or was rolled back from.

        Read in the ledger's order: a version a rollback moved away from is tainted; one a
        (passed) rollback moved onto is cleared, since that run chose it (with ``--emergency``
        if it was tainted then).
        """
        bad: dict[tuple[str, str], str] = {}
        for rec in self.ledger.records(self.env):
            if rec.stage == "rollback":
                if rec.status != "passed":
                    continue
                for fn, old in rec.old_versions.items():
                    new = str(rec.new_versions.get(fn))
                    if str(old) != new:
                        bad[(fn, str(old))] = (f"{fn} version {old} was rolled back from by rollback run "
                                               f"{rec.run_id} of release {rec.release or '(none)'}")
                        bad.pop((fn, new), None)
                continue
            if rec.status not in ("rolled_back", "failed") or not rec.new_versions:
                continue
            for fn, version in rec.new_versions.items():
                if str(rec.old_versions.get(fn)) != str(version):
                    bad[(fn, str(version))] = (f"{fn} version {version} was release {rec.release}'s new version "
                                               f"and its {rec.stage} stage ended {rec.status} (run {rec.run_id})")
        return bad

    def _known_bad(self, to: dict[str, str]) -> list[Precondition]:
        """Refuse a rollback target that failed its gate or was rolled back from (:meth:`_tainted`).

        At 3 a.m. a version number is easy to mistype, and "roll back to 7" where 7
        is what was rolled back an hour ago re-ships the incident; a rollback job that
        CI retries must not roll forward again. ``--to-version`` with ``--emergency
        --reason`` overrides (recorded), for when that version really is the way out.
        """
        tainted = self._tainted()
        bad = [tainted[(fn, str(v))] for fn, v in to.items() if (fn, str(v)) in tainted]
        if not bad:
            return []
        history = "; ".join(sorted(set(bad)))
        if self.settings.to_version is None:
            return [Precondition("rollback target gate history", False,
                                 f"{history}: rolling back onto it would re-ship that failure. Name a target with "
                                 "--to-version (with --emergency --reason TEXT if it is that version)")]
        if self.settings.emergency:
            return [Precondition("rollback target gate history", True,
                                 f"{history} - accepted with --emergency: {self.settings.reason}")]
        return [Precondition("rollback target gate history", False,
                             f"{history}: rolling back to a version that failed its gate or was rolled back from re-ships "
                             "that failure. "
                             "Pick another --to-version, or pass --emergency --reason TEXT if this version really "
                             "is the way out")]

    def _rolled_back_to(self, served: dict[str, str]) -> StageRecord | None:
        """The latest passed rollback that moved traffic onto ``served``, if that is how it got there."""
        for rec in reversed(self.ledger.records(self.env)):
            if rec.new_versions == served and rec.stage == "rollback" and rec.status == "passed" \
                    and rec.old_versions and rec.old_versions != served:
                return rec
        return None

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
        if self.release:
            mine = self._release_rollback(current)
            if mine is not None:
                return mine
        if any(s.weights for s in current.values()):
            return _versions(current), "mid-shift: every function back to its primary (old) version"
        served = _versions(current)
        for rec in reversed(self.ledger.records(self.env)):
            if rec.new_versions != served:
                continue
            if rec.stage == "rollback" and rec.status == "passed":
                # What serves was put there by a rollback: a second one (a retried CI job) has nothing to
                # undo, and must not move traffic back onto the version the first one rolled back from.
                return served, (f"what serves ({served}) was put there by rollback run {rec.run_id} at "
                                f"{iso(rec.ended_at or rec.started_at)}: nothing to undo, nothing to move")
            if rec.old_versions and rec.old_versions != served:
                return dict(rec.old_versions), f"previous version before release {rec.release} ({rec.stage} record)"
        return None, (f"no previous version is recorded for what serves now ({served}); "
                      "pass --to-version N (or fn=N,fn=N)")

    def _release_rollback(self, current: dict[str, AliasState]) -> tuple[dict[str, str] | None, str] | None:
        """Rolling back a named release: only from traffic it put there (None: no deploy record to go by)."""
        rec = self._deploy_record()
        if rec is None or not rec.new_versions or not rec.old_versions:
            return None
        foreign = foreign_traffic(current, rec.old_versions, rec.new_versions)
        if foreign:
            now_serving = "; ".join(f"{fn} serves {d}" for fn, d in foreign.items())
            return None, (f"release {self.release} is not what serves now ({now_serving}; release {self.release} is "
                          f"{rec.new_versions} over {rec.old_versions}): rolling it back would move traffic it did not "
                          f"put there. Roll back what serves with `pytest --env={self.env} --stage=rollback` (no "
                          "--release), or name the versions with --to-version")
        if not any(s.share_of(str(rec.new_versions.get(fn))) > 0 for fn, s in current.items()):
            return _versions(current), (f"nothing of release {self.release} serves now "
                                        f"({describe_states(current)}): nothing to move")
        return dict(rec.old_versions), f"release {self.release}'s previous versions (its deploy record)"
