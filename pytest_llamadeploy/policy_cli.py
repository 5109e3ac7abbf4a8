"""``llamadeploy policy check [DIR]`` and ``llamadeploy policy schema``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .guard import guard_problems
from .policy import PolicyError, available_envs, json_schema, load_policy, misnamed_policy_files


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate every policy in DIR and enforce the guard rules")
    check.add_argument("dir", nargs="?", default="policies", help="policy folder (default: policies)")
    sub.add_parser("schema", help="print the JSON Schema of a policy file (for editors)")


def run(args: argparse.Namespace) -> int:
    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    directory = Path(args.dir)
    envs = available_envs(directory)
    if not envs:
        print(f"{directory}: no policy files (*.yaml) found", file=sys.stderr)
        return 2
    failed = False
    for path in misnamed_policy_files(directory):
        failed = True
        print(f"error: {path}: {path.stem!r} cannot be an env name (lower-case letters, digits, '_' and '-' only); "
              "rename the file", file=sys.stderr)
    for env in envs:
        try:
            loaded = load_policy(directory, env)
        except PolicyError as exc:
            failed = True
            for problem in exc.problems:
                print(f"error: {problem}", file=sys.stderr)
            continue
        violations = guard_problems(loaded)
        for problem in violations:
            failed = True
            print(f"error: {problem}", file=sys.stderr)
        if not violations:
            print(f"ok: {env} ({' <- '.join(str(f) for f in reversed(loaded.files))}, sha256 {loaded.short_hash})")
    return 1 if failed else 0
