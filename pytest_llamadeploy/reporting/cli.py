"""``llamadeploy report``: build the HTML report with the Allure 3 CLI pinned in tools/allure (offline).

The CLI is an npm package installed by ``bash scripts/install-report-tools.sh``;
we generate its ``allurerc.json`` (categories live there in Allure 3, not in
categories.json) with a history file so the report shows the trend across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pytest_llamadeploy.reporting.categories import allure_rules

INSTALL_HINT = "bash scripts/install-report-tools.sh"
#: In a repository set up with ``llamadeploy init`` (tools/allure/package*.json written there).
INIT_INSTALL_HINT = "npm ci --prefix tools/allure"
#: This checkout's pinned npm tools; an installed package has none beside it and uses ./tools/allure.
TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools" / "allure"
DEFAULT_HISTORY = Path(".llamadeploy") / "allure-history.jsonl"
GENERATE_TIMEOUT_S = 300
# what an Allure 3 report directory holds (multi-file and single-file)
_REPORT_ENTRIES = {"index.html", "data", "widgets", "summary.json", "test-results.json", "history", "favicon.ico",
                   "awesome"}


class ReportError(Exception):
    """A report could not be built; the message says what was checked and the fix."""


@dataclass(frozen=True)
class ReportRequest:
    results: tuple[Path, ...]
    out: Path
    single_file: bool = False
    history: Path | None = DEFAULT_HISTORY
    name: str = "llamadeploy gates"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", action="append", type=Path, metavar="DIR",
                        help="Allure results directory (repeat for several jobs' results; default: allure-results)")
    parser.add_argument("--out", type=Path, default=Path("allure-report"), metavar="DIR",
                        help="report output directory (default: allure-report)")
    parser.add_argument("--single-file", action="store_true",
                        help="one self-contained index.html (opens from disk, attach it anywhere)")
    parser.add_argument("--history", type=Path, default=DEFAULT_HISTORY, metavar="FILE",
                        help=f"history file kept across runs for the trend (default: {DEFAULT_HISTORY})")
    parser.add_argument("--no-history", action="store_true", help="do not read or append the history file")
    parser.add_argument("--name", default="llamadeploy gates", help="report title")


def run(args: argparse.Namespace) -> int:
    request = ReportRequest(
        results=tuple(args.results or [Path("allure-results")]),
        out=args.out,
        single_file=args.single_file,
        history=None if args.no_history else args.history,
        name=args.name,
    )
    try:
        index = build_report(request)
    except ReportError as exc:
        print(f"llamadeploy report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0


def allure_cli() -> list[str]:
    """The command that runs the pinned Allure 3 CLI, or ReportError naming the install script."""
    override = os.environ.get("LLAMADEPLOY_ALLURE_CLI")
    candidates = [Path(override)] if override else [
        tools / "node_modules" / "allure" / "cli.js" for tools in (TOOLS_DIR, Path.cwd() / "tools" / "allure")]
    cli = next((c for c in candidates if c.is_file()), candidates[0])
    hint = f"`{INSTALL_HINT}` in a checkout of llamadeploy, `{INIT_INSTALL_HINT}` in a repository set up by `llamadeploy init`"
    node = shutil.which("node")
    if node is None:
        raise ReportError(f"node is not installed (needed to run the Allure 3 CLI); run {hint}")
    if not cli.is_file():
        raise ReportError(f"the Allure 3 CLI is missing at {' and '.join(str(c) for c in candidates)}; run {hint} "
                          "(installs npm package `allure` pinned in tools/allure/package.json)")
    return [node, str(cli)]


def allurerc(request: ReportRequest) -> dict[str, object]:
    template = json.loads((Path(__file__).with_name("allurerc.template.json")).read_text(encoding="utf-8"))
    template["name"] = request.name
    template["categories"] = {"rules": allure_rules()}
    if request.history is None:
        template.pop("historyPath")
        template.pop("historyLimit")
    else:
        template["historyPath"] = str(request.history.resolve())
    options = template["plugins"]["awesome"]["options"]
    options["reportName"] = request.name
    options["singleFile"] = request.single_file
    return template


def _clear_previous_report(out: Path) -> None:
    # Allure 3 leaves files of an earlier report in place (a stale categories
    # widget, for one), so a rebuild starts from an empty directory. Only a
    # directory that holds a report is removed: --out . must never wipe a repo.
    if not out.exists():
        return
    if not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a directory")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    foreign = {e for e in entries if e not in _REPORT_ENTRIES and not e.startswith("app-")}
    if "index.html" not in entries or foreign:
        raise ReportError(f"--out {out} is not empty and does not hold an Allure report "
                          f"(found {sorted(entries)[:5]}); give a new or report-only directory")
    shutil.rmtree(out)


def build_report(request: ReportRequest) -> Path:
    """Generate the report; return its index.html."""
    for results in request.results:
        if not results.is_dir():
            raise ReportError(f"results directory {results} does not exist; run the gates with "
                              f"--alluredir={results} first, or pass --results DIR")
        if not any(results.glob("*-result.json")):
            raise ReportError(f"results directory {results} holds no *-result.json; "
                              "was it written by pytest --alluredir?")
    command = allure_cli()
    _clear_previous_report(request.out)
    if request.history is not None:
        request.history.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llamadeploy-allurerc-") as tmp:
        config = Path(tmp) / "allurerc.json"
        config.write_text(json.dumps(allurerc(request), indent=2), encoding="utf-8")
        argv = [*command, "generate", *(str(r.resolve()) for r in request.results),
                "--config", str(config), "--output", str(request.out.resolve())]
        try:
            proc = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=GENERATE_TIMEOUT_S,
                                  env={**os.environ, "NO_COLOR": "1"})
        except subprocess.TimeoutExpired as exc:
            raise ReportError(f"allure generate did not finish in {GENERATE_TIMEOUT_S}s") from exc
    index = request.out / "index.html"
    if proc.returncode != 0 or not index.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ReportError(f"allure generate exited {proc.returncode} without {index}:\n{tail}")
    return index
