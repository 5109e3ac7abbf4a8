"""Manual judgement: ``llamadeploy decide`` promotes or rolls back a stage that paused for a human.

With ``watch.on_inconclusive: pause`` a stage whose watch could not decide ends
``paused`` (exit 6): traffic stays where the stage put it, the record says what is
awaited and the exact commands (``details.awaiting``), and every later stage in the
env is refused naming them (decide.py), but a ``--stage=rollback``, which decides
it too. This module is Argo Rollouts' resume/abort, with the decision on record:

- ``--promote``: the stage is marked ``passed``, so the next plan stage may run;
- ``--rollback``: traffic goes back exactly as a failed stage's would
  (``StageRunner.rollback``: only traffic the release put there, retried until
  ``rollback_deadline``; ``rollback_failed`` and its repair command otherwise).

Who decided is resolved as the approvals are (``--approved-by`` or the policy's
``approval.env_vars``; required where the env requires an approval) and recorded
with the reason in ``details.decision``. Every write is fenced by the env's lock
(ledger.py, lease.py). The record is set back to ``started`` with the decision
``pending`` before anything moves, so a decide killed half-way leaves a state the
next run sees: any stage is refused naming this command, and running it again
finishes the decision (a rollback is idempotent).

Hooks: the traffic driver and ledger backend are the defaults here (no pytest
session, no conftest.py plugins are loaded); the webhook notifier
(``LLAMADEPLOY_WEBHOOK_URL``) is told as a stage run tells it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .ledger import StageRecord, iso, this_owner

CHOICES = ("promote", "rollback")


def decide_command(env: str, release: str, stage: str, choice: str, policy_dir: Path | None = None, *,
                   approval: bool = False) -> str:
    """The exact ``llamadeploy decide`` command for one choice (recorded with a paused stage)."""
    command = f"llamadeploy decide --env {env} --release {release} --stage {stage} --{choice} --reason TEXT"
    if policy_dir is not None and Path(policy_dir).resolve() != (Path.cwd() / "policies").resolve():
        command += f" --policy-dir {shlex.quote(str(policy_dir))}"
    if approval:
        command += " --approved-by NAME"
    return command


def awaiting(record: StageRecord | None) -> bool:
    """Does ``record`` wait for a decision: paused, or a decide that was killed before it finished?"""
    if record is None:
        return False
    pending = (record.details.get("decision") or {}).get("pending")
    return record.status == "paused" or (record.status == "started" and bool(pending))


class _Hooks:
    """The runner's hooks outside a pytest session: default driver and ledger, the webhook notifier."""

    def __init__(self, notifier: Any) -> None:
        self.notifier = notifier

    def pytest_llamadeploy_traffic_driver(self, **_: Any) -> None:
        return None

    def pytest_llamadeploy_ledger_backend(self, **_: Any) -> None:
        return None

    def pytest_llamadeploy_checkpoint(self, **_: Any) -> None:
        return None

    def pytest_llamadeploy_metric_provider(self, **_: Any) -> None:
        return None  # the built-in providers of the policy's sources

    class _NoVerdictPlugins:
        """No verdict plugin is asked outside a pytest session (stage.py asks only when one is registered)."""

        @staticmethod
        def get_hookimpls() -> list[Any]:
            return []

    pytest_llamadeploy_verdict = _NoVerdictPlugins()

    def pytest_llamadeploy_notify(self, event: str, record: dict[str, Any]) -> None:
        if self.notifier is not None:
            self.notifier.pytest_llamadeploy_notify(event=event, record=record)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="environment (a policy name)")
    parser.add_argument("--release", required=True, help="the release whose stage is paused")
    parser.add_argument("--stage", help="the paused stage (default: the release's one paused stage)")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--promote", action="store_true", help="mark the stage passed: the next stage may run")
    choice.add_argument("--rollback", action="store_true", help="roll traffic back as a failed stage would")
    parser.add_argument("--reason", required=True, help="why: recorded with the decision")
    parser.add_argument("--approved-by", dest="approved_by", default=None,
                        help="who decides (default: the policy's approval variables, e.g. LLAMADEPLOY_APPROVED_BY)")
    parser.add_argument("--policy-dir", default="policies", help="policy folder (default: policies)")


def _refuse(message: str) -> int:
    print(f"llamadeploy decide refused; nothing was changed: {message}", file=sys.stderr)
    return 4


def run(args: argparse.Namespace) -> int:
    from .guard import guard_problems
    from .options import Settings, approver_from
    from .policy import PolicyError, load_policy
    from .stage import Refused, StageRunner

    choice = "promote" if args.promote else "rollback"
    policy_dir = Path(args.policy_dir).resolve()
    if not args.reason.strip():
        return _refuse("--reason is empty: say why (it is recorded with the decision)")
    try:
        loaded = load_policy(policy_dir, args.env)
    except PolicyError as exc:
        return _refuse("invalid policy:\n  " + "\n  ".join(exc.problems))
    violations = guard_problems(loaded)
    if violations:
        return _refuse(f"the {args.env} policy is looser than the runbook:\n  " + "\n  ".join(violations))
    policy = loaded.policy
    approver = approver_from(args, policy.approval.env_vars)
    if policy.approval.required and not approver:
        return _refuse(f"{args.env} requires an approval for a decision: pass --approved-by NAME or set "
                       f"{' or '.join(policy.approval.env_vars)}")
    settings = Settings(env=args.env, stage=args.stage or policy.plan[0], release=args.release, policy_dir=policy_dir,
                        plan=False, approved_by=approver, to_version=None, emergency=False, reason=args.reason,
                        alluredir=Path.cwd() / "allure-results", artifacts=Path.cwd() / ".llamadeploy/runs",
                        rootdir=Path.cwd())
    from .aws import aws_config
    from .ledger import LedgerCorrupt, open_ledger
    from .notify import from_environment as webhook_from_environment

    hooks = _Hooks(webhook_from_environment(out=print, consume=True))
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        records = [r for r in open_ledger(policy, aws_config(policy), Path.cwd()).records(args.env)
                   if r.release == args.release]
    except LedgerCorrupt as exc:
        return _refuse(str(exc))
    except (BotoCoreError, ClientError, OSError) as exc:
        from .redact import redact

        return _refuse(redact(f"the ledger could not be read ({type(exc).__name__}: {exc}); run it again once AWS "
                              "answers"))
    waiting = [r for r in records if awaiting(r) and (args.stage is None or r.stage == args.stage)]
    if not waiting:
        have = ", ".join(f"{r.stage}={r.status}" for r in records)
        return _refuse(f"no stage of release {args.release} in {args.env} awaits a decision "
                       f"({have or 'no record of that release'})")
    if len(waiting) > 1:
        return _refuse(f"{len(waiting)} stages of {args.release} await a decision "
                       f"({', '.join(r.stage for r in waiting)}): name one with --stage")
    stage = waiting[0].stage
    if stage not in policy.stages:
        return _refuse(f"stage {stage} of the paused record is not in the {args.env} policy any more")
    from dataclasses import replace

    runner = StageRunner(replace(settings, stage=stage), loaded, hooks, out=print)
    return _decide(runner, choice, approver, args.reason, Refused)


def _decide(runner: Any, choice: str, approver: str | None, reason: str, refused: type[Exception]) -> int:
    """Under the env's lock: the decision recorded as pending, then carried out, then the verdict."""
    lease = float(runner.policy.ledger.lease)
    try:
        taken = runner.take_lock(lease)
    except refused as exc:
        return _refuse("; ".join(getattr(exc, "problems", [str(exc)])))
    try:
        runner.start_heartbeat(lease, taken)
        record = runner.ledger.get(runner.env, runner.release, runner.stage)  # again, now that the lock is ours
        if not awaiting(record):
            runner._let_go()
            return _refuse(f"{runner.stage} of {runner.release} no longer awaits a decision "
                           f"(it is {record.status if record else 'not recorded'})")
        assert record is not None
        earlier = record.details.get("decision") or {}
        why_paused = (record.details.get("awaiting") or {}).get("why") or record.reason
        record.details["decision"] = {
            "decision": choice, "by": approver, "owner": this_owner(), "reason": reason, "at": iso(time.time()),
            "run_id": runner.run_id, "paused_run": earlier.get("paused_run") or record.run_id, "pending": choice,
            **({"resumed_decide": earlier["run_id"]} if earlier.get("run_id") else {}),
        }
        record.status, record.run_id, record.owner, record.ended_at = "started", runner.run_id, this_owner(), None
        runner.record = record
        runner._put(record)  # before anything moves: a decide killed from here on is seen by the next run
    except BaseException:
        runner.record = None
        runner._let_go()
        raise
    who = approver or this_owner()
    runner.out(f"llamadeploy: deciding {runner.stage} of {runner.release} in {runner.env}: {choice} by {who} "
               f"({reason}); run {runner.run_id}")
    record.details["decision"]["pending"] = None
    if choice == "promote":
        status, text = runner.finish([], 1, passed_reason=f"paused ({why_paused}); decided: promoted by {who}: {reason}")
        ok = status == "passed"
    else:
        runner.failure = f"paused ({why_paused}); decided: roll back by {who}: {reason}"
        runner.rollback(runner.failure)
        status, text = runner.finish([], 1)
        ok = status == "rolled_back"
    runner.out(f"llamadeploy: {runner.env} {runner.stage} {runner.release}: {status.upper()}: {text}")
    code = runner.exit_code()
    return code if code is not None else (0 if ok else 1)
