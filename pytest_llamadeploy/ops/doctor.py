"""``llamadeploy doctor --env E``: the runbook's Troubleshooting section as checks.

Each finding carries the runbook's own resolution steps (quoted), plus, where
the runbook is silent, the one command that gets a stuck stack moving again.
Exit code: 0 when every check is ok, 1 when there are findings, 2 when the
policy or targets cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..redact import redact
from .proven import check_names, check_series
from .results import Finding

# Quoted from RUNBOOK.md, "Troubleshooting".
DEPLOYMENT_FAILS = [
    "Check AWS credentials: `aws sts get-caller-identity`",
    "Check CloudFormation stack status in AWS Console",
    "Check CloudFormation events for error details",
    "Fix the issue and retry deployment",
]
HEALTH_CHECK_FAILS = [
    "Check Lambda function logs in CloudWatch",
    "Verify environment variables in Lambda console",
    "Test database connection",
    "Test Redis connection",
    "Rollback if issue cannot be resolved quickly",
]
#: Stack states a deployment cannot start from.
BROKEN_STATES = {"UPDATE_ROLLBACK_FAILED", "ROLLBACK_FAILED", "DELETE_FAILED", "CREATE_FAILED",
                 "ROLLBACK_COMPLETE", "IMPORT_ROLLBACK_FAILED"}
_STACK_HINTS = {
    "UPDATE_ROLLBACK_FAILED": "then `aws cloudformation continue-update-rollback --stack-name {stack}` "
                              "(skip resources that cannot roll back with --resources-to-skip)",
    "ROLLBACK_COMPLETE": "the first create failed: delete the stack (`aws cloudformation delete-stack "
                         "--stack-name {stack}`) and deploy again",
    "ROLLBACK_FAILED": "delete the stack (`aws cloudformation delete-stack --stack-name {stack}`) after "
                       "checking its resources, then deploy again",
}


def check_credentials(aws: Any) -> Finding:
    try:
        ident = aws.client("sts").get_caller_identity()
    except Exception as exc:
        return Finding("credentials", False, f"sts get-caller-identity failed: {_short(exc)} "
                       "(Possible cause: AWS credentials expired)", DEPLOYMENT_FAILS[:1] + DEPLOYMENT_FAILS[3:])
    return Finding("credentials", True, f"account {ident.get('Account')} as {ident.get('Arn')}")


def check_stack(aws: Any, stack: str) -> Finding:
    cfn = aws.client("cloudformation")
    try:
        found = cfn.describe_stacks(StackName=stack)["Stacks"]
    except Exception as exc:
        return Finding("cloudformation_stack", False, f"describe-stacks {stack} failed: {_short(exc)}",
                       DEPLOYMENT_FAILS)
    status = found[0]["StackStatus"]
    reason = found[0].get("StackStatusReason") or ""
    if status not in BROKEN_STATES and not status.endswith("_IN_PROGRESS"):
        return Finding("cloudformation_stack", True, f"stack {stack} is {status}")
    failures = _failure_events(cfn, stack)
    detail = f"stack {stack} is {status}" + (f": {reason}" if reason else "")
    if status.endswith("_IN_PROGRESS"):
        detail += " (another deployment is running, or it is stuck: a deployment cannot start until it ends)"
    if failures:
        detail += "; recent failures: " + "; ".join(failures)
    steps = list(DEPLOYMENT_FAILS)
    if status in _STACK_HINTS:
        steps.insert(3, _STACK_HINTS[status].format(stack=stack))
    return Finding("cloudformation_stack", False, detail, steps)


def _failure_events(cfn: Any, stack: str, limit: int = 3) -> list[str]:
    try:
        events = cfn.describe_stack_events(StackName=stack)["StackEvents"]
    except Exception:
        return []
    out = []
    for e in events:  # newest first
        if e.get("ResourceStatus", "").endswith("_FAILED"):
            out.append(f"{e.get('LogicalResourceId')} {e['ResourceStatus']}: {e.get('ResourceStatusReason', '')}".strip())
        if len(out) >= limit:
            break
    return out


def check_lambda_env(aws: Any, policy: Any) -> Finding:
    required = policy.preflight.required_env_vars
    client = aws.client("lambda")
    problems, seen = [], []
    for function in policy.service.functions:
        try:
            alias = client.get_alias(FunctionName=function, Name=policy.service.alias)
            versions = [alias["FunctionVersion"]]
            versions += list((alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights", {}))
            for version in versions:
                conf = client.get_function_configuration(FunctionName=function, Qualifier=version)
                names = set((conf.get("Environment") or {}).get("Variables", {}))
                absent = [v for v in required if v not in names]
                seen.append(f"{function}:{version}")
                if absent:
                    problems.append(f"{function} version {version} (alias {policy.service.alias}) lacks "
                                    f"{', '.join(absent)}")
        except Exception as exc:
            problems.append(f"{function} alias {policy.service.alias}: {_short(exc)}")
    if problems:
        return Finding("lambda_env_vars", False, "; ".join(problems) + " (policy preflight.required_env_vars)",
                       HEALTH_CHECK_FAILS[1:2] + HEALTH_CHECK_FAILS[4:])
    return Finding("lambda_env_vars", True,
                   f"{', '.join(required) or 'no required variables'} present on {', '.join(seen)}")


def check_postgres(dsn: str) -> Finding:
    from . import pg
    from .results import OpsError

    if not dsn:
        return Finding("postgres", False, "no DSN: set targets.postgres_dsn in the policy", HEALTH_CHECK_FAILS[2:3])
    try:
        conn = pg.connect(dsn)
        try:
            conn.execute("SELECT 1").fetchone()
            (version,) = conn.execute("SHOW server_version").fetchone()
        finally:
            conn.close()
    except OpsError as exc:
        return Finding("postgres", False, str(exc) + " (Possible cause: Database connection failed)",
                       HEALTH_CHECK_FAILS[2:3] + HEALTH_CHECK_FAILS[4:])
    return Finding("postgres", True, f"SELECT 1 ok on {pg.safe_dsn(dsn)} (PostgreSQL {version})")


def check_redis(url: str) -> Finding:
    import redis

    if not url:
        return Finding("redis", False, "no URL: set targets.redis_url in the policy", HEALTH_CHECK_FAILS[3:4])
    safe = redact(url)
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return Finding("redis", False, f"PING {safe} failed: {redact(_short(exc), [url])} "
                       "(Possible cause: Redis connection failed)", HEALTH_CHECK_FAILS[3:])
    return Finding("redis", True, f"PING ok on {safe}")


def run_doctor(policy: Any, aws_config: Any, targets: Any) -> list[Finding]:
    """Every troubleshooting check, in the runbook's order (deployment, then health).

    After the stack and the functions: every name under ``resources:`` and every
    series the rules read, proven to exist (ops/proven.py)."""
    findings = [check_credentials(aws_config)]
    if findings[0].ok:
        findings += [check_stack(aws_config, policy.resources.stack), check_lambda_env(aws_config, policy),
                     check_names(aws_config, policy), check_series(aws_config, policy)]
    findings += [check_postgres(targets.postgres_dsn), check_redis(targets.redis_url)]
    return findings


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()}"[:400]


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="environment (a policy file name, e.g. prod)")
    parser.add_argument("--policy-dir", default="policies", help="folder of policy files (default: policies)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


def run(args: argparse.Namespace) -> int:
    from ..aws import aws_config
    from ..policy import PolicyError, load_policy
    from ..sandbox.state import SandboxNotRunning
    from ..targets import TargetError, resolve_targets

    try:
        policy = load_policy(args.policy_dir, args.env).policy
        config = aws_config(policy)
        targets = resolve_targets(policy)
    except (PolicyError, TargetError, SandboxNotRunning) as exc:
        print(f"llamadeploy doctor: {exc}", file=sys.stderr)
        return 2
    findings = run_doctor(policy, config, targets)
    if args.json:
        print(json.dumps([f.to_json() for f in findings], indent=2))
    else:
        for f in findings:
            print(f"[{'ok' if f.ok else 'FAIL'}] {f.name}: {f.detail}")
            for i, step in enumerate(f.resolution, 1):
                print(f"       {i}. {step}")
        bad = sum(not f.ok for f in findings)
        print(f"{len(findings) - bad} ok, {bad} finding(s)")
    return 0 if all(f.ok for f in findings) else 1
