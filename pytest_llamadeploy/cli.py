"""The ``llamadeploy`` command. Each concern registers its own subcommands.

Subcommand modules are imported only when their command runs, so ``llamadeploy
status`` never pays for the sandbox's imports (and locust never loads here).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command -> (module with ``register(parser)`` and ``run(args) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("pytest_llamadeploy.scaffold", "set up a repository: policies/, suites/, the CI workflow"),
    "policy": ("pytest_llamadeploy.policy_cli", "check policies, print their JSON Schema"),
    "status": ("pytest_llamadeploy.status", "alias versions, weights and recent releases of an env"),
    "sandbox": ("pytest_llamadeploy.sandbox.cli", "the local rehearsal of production: up, down, status, deploy, fault"),
    "rehearse": ("pytest_llamadeploy.rehearse", "run a good and a bad release through the sandbox plan"),
    "report": ("pytest_llamadeploy.reporting.cli", "build the Allure HTML report"),
    "doctor": ("pytest_llamadeploy.ops.doctor", "the runbook's troubleshooting checks for an env"),
    "summary": ("pytest_llamadeploy.reporting.summary", "the stage verdict as Markdown (CI's job summary)"),
    "decide": ("pytest_llamadeploy.judgement", "promote or roll back a stage paused for a decision (manual judgement)"),
}


def _version() -> str:
    from .scaffold import version

    return version()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="llamadeploy", description="Deployment runbooks as pytest gates.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"llamadeploy {name}", description=COMMANDS[name][1])
    module.register(command_parser)
    args = command_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
