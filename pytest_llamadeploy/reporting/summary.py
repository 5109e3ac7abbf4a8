"""``llamadeploy summary``: the stage verdict and its metric table as Markdown, for CI's job summary.

Reads the stage verdict the gate wrote into the Allure results (the "stage
decision" attachment: each metric's value, threshold, window, version and
verdict), so it needs no AWS access and works after any exit code. In GitHub
Actions: ``llamadeploy summary >> "$GITHUB_STEP_SUMMARY"`` in a step that runs
``if: always()``. No verdict in the results means the gate refused before it
changed anything (exit 4) or never started: the summary says so and exits 0,
since the job's result is the gate step's.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_llamadeploy.redact import redact
from pytest_llamadeploy.reporting.stage_result import VERDICT

_ICON = {"passed": ":white_check_mark:", "rolled_back": ":leftwards_arrow_with_hook:", "failed": ":x:",
         "paused": ":double_vertical_bar:"}
_METRIC_COLUMNS = ("metric", "function", "version", "value", "op", "threshold", "window", "samples", "verdict")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("allure-results"), metavar="DIR",
                        help="the gate's Allure results (default: allure-results)")
    parser.add_argument("--env", help="only a verdict of this env (default: the newest verdict in DIR)")
    parser.add_argument("--stage", help="only a verdict of this stage")
    parser.add_argument("--release", help="only a verdict of this release")


def _labels(result: Mapping[str, Any]) -> dict[str, str]:
    return {label["name"]: label["value"] for label in result.get("labels", [])}


def _release(result: Mapping[str, Any]) -> str:
    return next((p["value"] for p in result.get("parameters", []) if p.get("name") == "release"), "")


def find_verdict(results: Path, *, env: str | None = None, stage: str | None = None,
                 release: str | None = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the newest stage verdict result matching the filters, its decision JSON), or None."""
    found: list[dict[str, Any]] = []
    for path in results.glob("*-result.json") if results.is_dir() else ():
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        labels = _labels(result)
        if labels.get("story") != VERDICT:
            continue
        if (env and labels.get("epic") != env) or (stage and labels.get("feature") != stage) or (
                release and _release(result) != release):
            continue
        found.append(result)
    if not found:
        return None
    newest = max(found, key=lambda r: (r.get("stop") or 0, r.get("start") or 0))
    decision: dict[str, Any] = {}
    for attachment in newest.get("attachments", []):
        if attachment.get("name") == "stage decision":
            try:
                decision = json.loads((results / attachment["source"]).read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError):
                decision = {}
    return newest, decision


def _cell(value: object) -> str:
    """A Markdown table cell: redacted, one line, pipes escaped."""
    if value is None:
        return ""
    if isinstance(value, float):
        value = f"{value:.4g}"
    return redact(str(value)).replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render(result: Mapping[str, Any], decision: Mapping[str, Any]) -> str:
    from pytest_llamadeploy.evidence import _describe_alias

    labels = _labels(result)
    env = decision.get("env") or labels.get("epic", "?")
    stage = decision.get("stage") or labels.get("feature", "?")
    release = decision.get("release") or _release(result) or "(no release)"
    status = str(decision.get("status") or result.get("status") or "unknown")
    reason = decision.get("reason") or (result.get("statusDetails") or {}).get("message") or ""
    lines = [f"### {_ICON.get(status, ':grey_question:')} llamadeploy: {_cell(env)} {_cell(stage)} "
             f"{_cell(release)}: {status.upper()}", ""]
    if reason:
        lines += [f"> {_cell(reason)}", ""]
    versions = decision.get("versions") or {}
    facts = [
        ("approver", decision.get("approver")),
        ("alias before", _describe_alias(decision.get("weights_before") or {})),
        ("alias after", _describe_alias(decision.get("weights_after") or {})),
        ("new versions", ", ".join(f"{fn} v{v}" for fn, v in sorted((versions.get("new") or {}).items()))),
        ("policy sha256", (decision.get("policy_sha256") or "")[:12]),
    ]
    lines += _table(("", ""), [(k, v) for k, v in facts if v])
    metrics = decision.get("metrics") or []
    if metrics:
        lines += ["", f"#### Metrics ({len(metrics)})", ""]
        lines += _table(_METRIC_COLUMNS, ([m.get(c) for c in _METRIC_COLUMNS] for m in metrics))
    unmet = [p for p in decision.get("preconditions") or [] if not p.get("ok", True)]
    if unmet:
        lines += ["", "#### Preconditions not met", ""] + [f"- {_cell(p.get('name'))}: {_cell(p.get('detail'))}"
                                                            for p in unmet]
    failed = decision.get("failed_tests") or []
    if failed:
        lines += ["", f"#### Failed gate tests ({len(failed)})", ""] + [f"- {_cell(t)}" for t in failed[:20]]
    observed = (decision.get("observed") or {}).get("breaches") or []
    if observed:  # --observe / observe: true: a breach that did not act must not hide in a green summary
        lines += ["", f"#### Observed only, NOT acted on ({len(observed)}; {_cell(decision['observed'].get('mode'))})",
                  ""] + [f"- {_cell(b)}" for b in observed[:20]]
    commands = (decision.get("awaiting") or {}).get("commands") or {}
    if status == "paused" and commands:
        lines += ["", "#### Awaiting a decision", ""] + [f"- `{_cell(c)}`" for c in commands.values()]
    return "\n".join(lines) + "\n"


def no_verdict(results: Path) -> str:
    return (f"### :no_entry: llamadeploy: no stage verdict in {results}\n\n"
            "The gate did not run a stage: it refused before changing anything (exit 4: a bad option, the previous "
            "stage not passed, an approval missing, the environment locked) or stopped before it started. The job "
            "log names the reason.\n")


def run(args: argparse.Namespace) -> int:
    found = find_verdict(args.results, env=args.env, stage=args.stage, release=args.release)
    print(no_verdict(args.results) if found is None else render(*found), end="")
    return 0
