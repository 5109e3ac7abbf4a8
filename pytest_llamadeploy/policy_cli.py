"""``llamadeploy policy check [DIR] [--json]`` and ``llamadeploy policy schema``."""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

from .guard import check_guard, is_guarded
from .policy import PolicyError, available_envs, json_schema, load_policy, misnamed_policy_files

#: A problem line of policy.py: ``FILE: KEY[ = VALUE]: WHAT IS ALLOWED``.
_PROBLEM = re.compile(r"^(?P<file>\S.*?\.ya?ml): (?P<key>\(top level\)|[\w.\-]+)(?: = (?P<value>.*?))?: (?P<allowed>.+)$",
                      re.DOTALL)
_FILE_ONLY = re.compile(r"^(?P<file>\S.*?\.ya?ml): (?P<allowed>.+)$", re.DOTALL)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate every policy in DIR and enforce the guard rules")
    check.add_argument("dir", nargs="?", default="policies", help="policy folder (default: policies)")
    check.add_argument("--json", action="store_true",
                       help="machine-readable: per env ok, problems and guard violations with file, key, value, allowed")
    sub.add_parser("schema", help="print the JSON Schema of a policy file (for editors)")


def problem_fields(line: str) -> dict[str, Any]:
    """A problem line as fields; what cannot be split stays ``None`` (``message`` always holds the whole line)."""
    fields: dict[str, Any] = {"file": None, "key": None, "value": None, "allowed": None, "message": line}
    match = _PROBLEM.match(line) or _FILE_ONLY.match(line)
    if match is not None:
        fields.update({k: v for k, v in match.groupdict().items() if v is not None})
    if fields["value"] is not None:  # policy.py shows values as repr(): 'fast' -> fast, 1 -> 1
        try:
            fields["value"] = ast.literal_eval(fields["value"])
        except (ValueError, SyntaxError):
            pass
    return fields


def check_env(directory: Path, env: str) -> dict[str, Any]:
    """One env's result: ``ok``, the files it merges, its hash, ``problems`` (invalid) and ``violations`` (guard)."""
    try:
        loaded = load_policy(directory, env)
    except PolicyError as exc:
        return {"ok": False, "files": [], "sha256": None, "problems": [problem_fields(p) for p in exc.problems],
                "violations": []}
    # Each violation names the file that sets the key: where to fix it.
    violations = [{"file": str(loaded.origin(v.key)), "key": v.key, "value": v.value, "allowed": v.allowed,
                   "rule": v.rule, "message": f"{loaded.origin(v.key)}: {v}"}
                  for v in check_guard(loaded.policy, guarded=is_guarded(loaded))]
    return {"ok": not violations, "files": [str(f) for f in loaded.files], "sha256": loaded.sha256,
            "problems": [], "violations": violations}


def run(args: argparse.Namespace) -> int:
    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    directory = Path(args.dir)
    envs = available_envs(directory)
    if not envs:
        message = f"{directory}: no policy files (*.yaml) found"
        if getattr(args, "json", False):
            print(json.dumps({"dir": str(directory), "ok": False, "envs": {},
                              "problems": [problem_fields(message)]}, indent=2))
        else:
            print(message, file=sys.stderr)
        return 2
    misnamed = [f"{path}: {path.stem!r} cannot be an env name (lower-case letters, digits, '_' and '-' only); "
                "rename the file" for path in misnamed_policy_files(directory)]
    results = {env: check_env(directory, env) for env in envs}
    ok = not misnamed and all(r["ok"] for r in results.values())
    if getattr(args, "json", False):
        print(json.dumps({"dir": str(directory), "ok": ok, "envs": results,
                          "problems": [problem_fields(m) for m in misnamed]}, indent=2, default=str))
        return 0 if ok else 1
    for message in misnamed:
        print(f"error: {message}", file=sys.stderr)
    # A problem of a file several envs extend (prod.yaml: sandbox, sandbox-aws) is one problem: said once.
    envs_of: dict[str, list[str]] = {}
    for env, result in results.items():
        for item in result["problems"] + result["violations"]:
            envs_of.setdefault(item["message"], []).append(env)
    for message, where in envs_of.items():
        print(f"error: {message}" + (f" (envs: {', '.join(where)})" if len(where) > 1 else ""), file=sys.stderr)
    for env, result in results.items():
        if result["ok"]:
            chain = " <- ".join(reversed(result["files"]))
            print(f"ok: {env} ({chain}, sha256 {result['sha256'][:12]})")
    return 0 if ok else 1
