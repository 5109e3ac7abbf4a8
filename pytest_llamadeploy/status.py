"""``llamadeploy status --env E [--json]``: what serves now and how recent releases went."""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .aws import aws_config
from .ledger import iso, open_ledger
from .policy import PolicyError, load_policy
from .traffic import LambdaAliasDriver


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="environment (a policy name)")
    parser.add_argument("--policy-dir", default="policies", help="policy folder (default: policies)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--limit", type=int, default=10, help="how many recent releases (default: 10)")


def collect(env: str, policy_dir: Path, limit: int = 10) -> dict[str, Any]:
    loaded = load_policy(policy_dir, env)
    policy = loaded.policy
    aws = aws_config(policy)
    driver = LambdaAliasDriver(aws.client("lambda"), policy.service.functions, policy.service.alias)
    functions = {fn: {"alias": policy.service.alias, **s.to_json()} for fn, s in driver.read().items()}
    ledger = open_ledger(policy, aws, Path.cwd())
    releases: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for rec in ledger.records(env):
        entry = releases.setdefault(rec.release, {"release": rec.release, "versions": {}, "stages": {}, "updated_at": None})
        if rec.new_versions and rec.stage in policy.plan:
            entry["versions"] = rec.new_versions
        entry["stages"][rec.stage] = rec.status
        entry["updated_at"] = iso(rec.ended_at or rec.started_at)
        releases.move_to_end(rec.release)
    lock = ledger.current_lock(env)
    return {
        "env": env,
        "policy_sha256": loaded.sha256,
        "functions": functions,
        "releases": list(reversed(list(releases.values())))[:limit],
        "lock": None if lock is None else {**lock.__dict__, "acquired_at": iso(lock.acquired_at), "expires_at": iso(lock.expires_at)},
    }


def run(args: argparse.Namespace) -> int:
    try:
        data = collect(args.env, Path(args.policy_dir), args.limit)
    except PolicyError as exc:
        print("\n".join(exc.problems))
        return 2
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{data['env']}:")
    for fn, state in data["functions"].items():
        weights = ", ".join(f"v{v} {w:.0%}" for v, w in state["weights"].items())
        print(f"  {fn:<14} alias {state['alias']} -> v{state['version']}" + (f" + {weights}" if weights else ""))
    lock = data["lock"]
    print(f"  lock: {'free' if lock is None else lock['owner'] + ' since ' + lock['acquired_at']}")
    for rel in data["releases"]:
        stages = " ".join(f"{s}={st}" for s, st in rel["stages"].items())
        print(f"  {rel['release']:<12} {json.dumps(rel['versions'])}  {stages}")
    return 0
