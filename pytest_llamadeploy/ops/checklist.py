"""The runbook's "Pre-Deployment Checklist" as checks, each with a pass/fail reason.

Production-only items (backup, window, stakeholders) apply when the policy is
production or extends it (``prod.yaml`` in its ``extends:`` chain), so the
sandbox, which rehearses prod, runs them too.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..units import format_duration
from .results import CheckResult, Ledger, OpsError

#: Names in checklist order; the suite has one test per name.
CHECKS = ("aws_names_exist", "metric_series_exist", "tests_passing", "migrations_prepared", "env_vars_updated",
          "backup_created", "deployment_window", "stakeholders_notified", "approval_recorded")
TOPIC = "llamadeploy-deployments"
_TRUE = {"1", "true", "yes", "passed", "success"}
_WINDOW = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


def is_production(ctx: Any) -> bool:
    return ctx.env == "prod" or any(p.stem == "prod" for p in ctx.loaded_policy.files)


def parse_window(window: str) -> tuple[int, int] | None:
    """``"09:00-17:00"`` -> (540, 1020) minutes after midnight UTC; ``""`` -> None (always open)."""
    if not window.strip():
        return None
    m = _WINDOW.match(window.strip())
    if not m:
        raise OpsError(f"preflight.window = {window!r}: write \"HH:MM-HH:MM\" in UTC, e.g. \"09:00-17:00\", "
                       "or \"\" for no window")
    h1, m1, h2, m2 = map(int, m.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59:
        raise OpsError(f"preflight.window = {window!r}: hours 00-24, minutes 00-59")
    return h1 * 60 + m1, h2 * 60 + m2


def in_window(window: str, days: list[int], now: datetime) -> tuple[bool, str]:
    span = parse_window(window)
    if span is None:
        return True, "no deployment window configured (preflight.window is empty): always open"
    start, end = span
    minute = now.hour * 60 + now.minute
    inside = start <= minute < end if start <= end else minute >= start or minute < end
    day_ok = now.isoweekday() in days
    stamp = now.strftime("%a %H:%M UTC")
    if inside and day_ok:
        return True, f"{stamp} is inside the window {window} on ISO weekdays {days}"
    why = "outside the hours" if not inside else f"weekday {now.isoweekday()} not in {days}"
    return False, (f"{stamp} is {why} of the window {window} (policy preflight.window/window_days); "
                   "deploy inside the window or pass --emergency --reason TEXT")


def run_preflight(ctx: Any, ledger: Ledger, *, emergency_reason: str | None,
                  now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> list[CheckResult]:
    """Run every checklist item; record the results (and any emergency) in the ledger (kind ``preflight``)."""
    if emergency_reason is not None and not emergency_reason.strip():
        raise OpsError("--emergency needs --reason TEXT saying why the deployment cannot wait for the window")
    prod = is_production(ctx)
    checks: list[tuple[str, Callable[[], CheckResult]]] = [
        ("aws_names_exist", lambda: _proven(ctx, "aws_names")),
        ("metric_series_exist", lambda: _proven(ctx, "metric_series")),
        ("tests_passing", lambda: _tests_passing(ctx, ledger)),
        ("migrations_prepared", lambda: _migrations_prepared(ctx)),
        ("env_vars_updated", lambda: _env_vars(ctx)),
        ("backup_created", lambda: _backup(ctx, ledger, prod)),
        ("deployment_window", lambda: _window(ctx, prod, emergency_reason, now())),
        ("stakeholders_notified", lambda: _notify(ctx, prod, emergency_reason)),
        ("approval_recorded", lambda: _approval(ctx)),
    ]
    results = []
    for name, check in checks:
        try:
            results.append(check())
        except OpsError as exc:
            results.append(CheckResult(name, False, str(exc)))
        except Exception as exc:  # a provider error must read as this item failing, not as a crash
            results.append(CheckResult(name, False, f"could not check: {type(exc).__name__}: {exc}"))
    ledger.put_artifact(ctx.env, ctx.release, "preflight", {
        "at": time.time(), "production": prod, "emergency_reason": emergency_reason,
        "ok": all(r.ok for r in results), "checks": [r.to_json() for r in results],
    })
    return results


def _proven(ctx: Any, what: str) -> CheckResult:
    """The doctor's proof that every name of ``resources:`` and every series of the rules exists (ops/proven.py)."""
    from .proven import check_names, check_series

    name = {"aws_names": "aws_names_exist", "metric_series": "metric_series_exist"}[what]
    if not ctx.policy.preflight.prove_names:
        return CheckResult(name, True, "not checked: preflight.prove_names is false for this env "
                           "(`llamadeploy doctor --env ENV` still checks)")
    finding = (check_names if what == "aws_names" else check_series)(ctx.aws_config, ctx.policy)
    return CheckResult(name, finding.ok, finding.detail)


def _tests_passing(ctx: Any, ledger: Ledger) -> CheckResult:
    var = ctx.policy.preflight.ci_status_env
    value = os.environ.get(var, "")
    if value.strip().lower() in _TRUE:
        return CheckResult("tests_passing", True, f"{var}={value} (CI status)")
    if value:
        return CheckResult("tests_passing", False, f"{var}={value}: CI reports the tests did not pass")
    for run in ledger.get_artifacts(ctx.env, "test_run"):
        if run.get("release") == ctx.release:
            ok = bool(run.get("passed"))
            return CheckResult("tests_passing", ok, f"recorded test run for {ctx.release}: "
                               f"{'passed' if ok else 'failed'}")
    return CheckResult("tests_passing", False, f"no CI status: set {var}=true from CI after the tests pass "
                       f"(policy preflight.ci_status_env), or record a test run for release {ctx.release}")


def _migrations_prepared(ctx: Any) -> CheckResult:
    from . import migrations

    directory = migrations.migrations_dir(ctx.policy)
    files = migrations.discover(directory)
    where = "all migrations"
    dsn = ctx.resolved_targets.postgres_dsn
    if dsn:
        try:
            files = migrations.pending(files, dsn)
            where = "pending migrations"
        except OpsError:
            pass  # unreachable database: check every file, which is stricter
    bad = migrations.problems(files)
    if bad:
        return CheckResult("migrations_prepared", False, "; ".join(bad))
    names = ", ".join(f.id for f in files) or "none"
    return CheckResult("migrations_prepared", True,
                       f"{where} in {directory} have rollback files and parse ({names})")


def _latest_version(client: Any, function: str) -> str:
    versions: list[int] = []
    kwargs: dict[str, Any] = {"FunctionName": function}
    while True:
        page = client.list_versions_by_function(**kwargs)
        versions += [int(v["Version"]) for v in page["Versions"] if v["Version"].isdigit()]
        if not page.get("NextMarker"):
            break
        kwargs["Marker"] = page["NextMarker"]
    if not versions:
        raise OpsError(f"Lambda function {function} has no published version; deploy the release first")
    return str(max(versions))


def _env_vars(ctx: Any) -> CheckResult:
    required = ctx.policy.preflight.required_env_vars
    if not required:
        return CheckResult("env_vars_updated", True, "no required variables (policy preflight.required_env_vars)")
    client = ctx.client("lambda")
    missing, seen = [], []
    for function in ctx.policy.service.functions:
        version = ctx.new_versions.get(function) or _latest_version(client, function)
        conf = client.get_function_configuration(FunctionName=function, Qualifier=version)
        names = set((conf.get("Environment") or {}).get("Variables", {}))
        absent = [v for v in required if v not in names]
        seen.append(f"{function}:{version}")
        if absent:
            missing.append(f"{function} version {version} lacks {', '.join(absent)}")
    if missing:
        return CheckResult("env_vars_updated", False, "; ".join(missing) +
                           " (policy preflight.required_env_vars): set them in the deploy configuration and redeploy")
    return CheckResult("env_vars_updated", True, f"{', '.join(required)} present on {', '.join(seen)}")


def _backup(ctx: Any, ledger: Ledger, prod: bool) -> CheckResult:
    if not prod:
        return CheckResult("backup_created", True, f"not required for {ctx.env} (production only)")
    max_age = ctx.policy.preflight.backup_max_age
    now = time.time()
    for record in ledger.get_artifacts(ctx.env, "backup"):
        if record.get("release") != ctx.release or not record.get("ok"):
            continue
        age = now - float(record.get("created_at", 0))
        if age <= max_age:
            return CheckResult("backup_created", True, f"backup {record.get('id')} for {ctx.release} is "
                               f"{format_duration(round(age))} old (max {format_duration(max_age)})")
        return CheckResult("backup_created", False, f"newest backup for {ctx.release} ({record.get('id')}) is "
                           f"{format_duration(round(age))} old, older than preflight.backup_max_age "
                           f"{format_duration(max_age)}: run the backup stage again")
    return CheckResult("backup_created", False, f"no successful backup recorded for release {ctx.release} in "
                       f"{ctx.env}: run the backup stage (--stage=backup) first")


def _window(ctx: Any, prod: bool, emergency_reason: str | None, now: datetime) -> CheckResult:
    if not prod:
        return CheckResult("deployment_window", True, f"not required for {ctx.env} (production only)")
    pf = ctx.policy.preflight
    ok, reason = in_window(pf.window, pf.window_days, now)
    if not ok and emergency_reason:
        return CheckResult("deployment_window", True, f"EMERGENCY outside the window: {emergency_reason} "
                           f"(recorded; {reason.split(' (')[0]})")
    return CheckResult("deployment_window", ok, reason)


def _notify(ctx: Any, prod: bool, emergency_reason: str | None) -> CheckResult:
    if not prod:
        return CheckResult("stakeholders_notified", True, f"not required for {ctx.env} (production only)")
    client = ctx.client("sns")
    arn = client.create_topic(Name=TOPIC)["TopicArn"]  # idempotent: returns the existing topic
    confirmed, pending = count_subscriptions(_subscriptions(client, arn))
    if not confirmed:
        # A publish to a topic nobody confirmed reaches nobody: the item would pass with no one told.
        return CheckResult("stakeholders_notified", False, (
            f"SNS topic {arn} has no confirmed subscription ({pending} pending confirmation): nobody would "
            "receive the notice; subscribe the stakeholders (aws sns subscribe --topic-arn "
            f"{arn} --protocol email --notification-endpoint TEAM@EXAMPLE.COM) and confirm the subscription"))
    subject = f"llamadeploy: {ctx.release} to {ctx.env}"
    message = (f"Release {ctx.release} is about to be deployed to {ctx.env} (run {ctx.run_id or '-'})."
               + (f" EMERGENCY: {emergency_reason}" if emergency_reason else ""))
    message_id = client.publish(TopicArn=arn, Subject=subject[:100], Message=message)["MessageId"]
    return CheckResult("stakeholders_notified", True,
                       f"published to {arn} ({confirmed} confirmed subscription(s)): MessageId {message_id}")


def _subscriptions(client: Any, arn: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TopicArn": arn}
    while True:
        page = client.list_subscriptions_by_topic(**kwargs)
        found += page.get("Subscriptions", [])
        if not page.get("NextToken"):
            return found
        kwargs["NextToken"] = page["NextToken"]


def count_subscriptions(subscriptions: list[dict[str, Any]]) -> tuple[int, int]:
    """(confirmed, pending): SNS lists an unconfirmed subscription with SubscriptionArn "PendingConfirmation"."""
    pending = sum(1 for s in subscriptions if s.get("SubscriptionArn") == "PendingConfirmation")
    return len(subscriptions) - pending, pending


def _approval(ctx: Any) -> CheckResult:
    approval = ctx.policy.approval
    if not approval.required:
        return CheckResult("approval_recorded", True, f"not required for {ctx.env} (policy approval.required)")
    if ctx.approver:
        return CheckResult("approval_recorded", True, f"approved by {ctx.approver}")
    return CheckResult("approval_recorded", False, "approval is required and none is recorded: set "
                       f"{' or '.join(approval.env_vars)} (policy approval.env_vars) to the approver")
