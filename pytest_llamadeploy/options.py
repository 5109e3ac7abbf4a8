"""The llamadeploy option group and the frozen Settings parsed from it once.

Each option has an ini twin (``llamadeploy_<name>``) so a repository can pin,
for example, its policy folder in ``pyproject.toml``; the command line wins.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from .narrowing import narrowing

# Matched with fullmatch: ``$`` also matches before a trailing newline, so "v1\n" passed as a release.
_RELEASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_VERSION = re.compile(r"\d+")

#: Options that only some stages read: option -> (Settings attribute, actions of the stages that use it).
#: Given to any other stage they would be silently ignored, and whoever typed them believes they acted.
#: ``--to-version``: the rollback target (stage.py ``_rollback_versions``); ``--rds``/``--all``: what a
#: backup copies (ops/__init__.py); ``--backup-id``: what a restore restores (ops/restore.py);
#: ``--emergency``: overrides the deployment window (ops/checklist.py) and a rollback target that failed its
#: gate (decide.py ``_known_bad``) and, at any stage, a run narrowed below its suites in a guarded env
#: (narrowing.py) or an ``--observe`` run there (plugin.py), nothing else. ``--reason`` is recorded with any
#: stage, so any stage takes it.
STAGE_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "--to-version": ("to_version", ("rollback",)),
    "--rds": ("backup_rds", ("backup",)),
    "--all": ("backup_all", ("backup",)),
    "--backup-id": ("backup_id", ("restore",)),
    "--emergency": ("emergency", ("preflight", "rollback")),
}

#: (option name, ini name, help, default)
_OPTIONS: list[tuple[str, str, str, str | None]] = [
    ("env", "llamadeploy_env", "environment: the name of a policy file in the policy folder (sandbox, dev, staging, prod)", None),
    ("stage", "llamadeploy_stage", "stage to run: one of the env's plan (deploy, shift10, ...) or an operation (preflight, verify, rollback, backup, migrate, restore)", None),
    ("release", "llamadeploy_release", "release tag the stage belongs to, e.g. v1.2.3", None),
    ("policy-dir", "llamadeploy_policy_dir", "folder of policy YAML files (default: policies/ under the rootdir)", None),
    ("approved-by", "llamadeploy_approved_by", "who approved this stage (prod requires it; CI may set it through an environment variable)", None),
    ("to-version", "llamadeploy_to_version", "rollback target: a Lambda version for every function (N) or per function (fn=N,fn=N)", None),
    ("reason", "llamadeploy_reason", "why: recorded with the stage (required with --emergency)", None),
    ("llama-alluredir", "llamadeploy_alluredir", "Allure results folder for gate runs (default: allure-results)", "allure-results"),
    ("llama-artifacts", "llamadeploy_artifacts", "folder for run artifacts: context, deploy output, load reports (default: .llamadeploy/runs)", ".llamadeploy/runs"),
]


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("llamadeploy", "llamadeploy deployment gates")
    for name, ini, help_text, default in _OPTIONS:
        dest = "llamadeploy_" + name.replace("-", "_")
        group.addoption(f"--{name}", dest=dest, default=None, help=help_text)
        parser.addini(ini, help=help_text, default=default)
    group.addoption("--plan", dest="llamadeploy_plan", action="store_true", default=None,
                    help="print what the stage would do (versions, weights, suites, thresholds, preconditions) and change nothing")
    parser.addini("llamadeploy_plan", type="bool", default=False, help="same as --plan")
    group.addoption("--rds", dest="llamadeploy_backup_rds", action="store_true", default=False,
                    help="backup stage: the RDS snapshot (and pg_dump in the sandbox) only")
    group.addoption("--all", dest="llamadeploy_backup_all", action="store_true", default=False,
                    help="backup stage: RDS and every DynamoDB table (the default when neither is given)")
    group.addoption("--backup-id", dest="llamadeploy_backup_id", default=None,
                    help="restore stage: the recorded backup to restore (default: the newest)")
    parser.addini("llamadeploy_rds", type="bool", default=False, help="same as --rds")
    parser.addini("llamadeploy_all", type="bool", default=False, help="same as --all")
    parser.addini("llamadeploy_backup_id", default=None, help="same as --backup-id")
    group.addoption("--emergency", dest="llamadeploy_emergency", action="store_true", default=None,
                    help="run outside the deployment window (requires --reason; recorded)")
    parser.addini("llamadeploy_emergency", type="bool", default=False, help="same as --emergency")
    group.addoption("--observe", dest="llamadeploy_observe", action="store_true", default=None,
                    help="dry-run analysis: every rule of the watch, key metrics and compare is evaluated and "
                         "reported as observed, and none acts (no rollback, the stage does not fail on a breach); "
                         "a guarded env (prod) needs --emergency --reason")
    parser.addini("llamadeploy_observe", type="bool", default=False, help="same as --observe")


def _get(config: pytest.Config, name: str) -> str | None:
    dest = "llamadeploy_" + name.replace("-", "_")
    value = config.getoption(dest)
    if value is None:
        value = config.getini("llamadeploy_" + name.replace("-", "_").removeprefix("llama_"))
    return value or None


@dataclass(frozen=True)
class Settings:
    env: str | None
    stage: str | None
    release: str | None
    policy_dir: Path
    plan: bool
    approved_by: str | None
    to_version: dict[str, str] | str | None
    emergency: bool
    reason: str | None
    alluredir: Path
    artifacts: Path
    rootdir: Path
    backup_rds: bool = False
    backup_all: bool = False
    backup_id: str | None = None
    #: What narrows the run below the stage's suites (-k, -m, a path; narrowing.py).
    narrowed: tuple[str, ...] = ()
    #: ``--observe``: every metric rule is evaluated and reported, none acts (observe.py).
    observe: bool = False

    @property
    def active(self) -> bool:
        """The gate is active when an environment is named; otherwise the plugin stays out of the way."""
        return self.env is not None


def parse_to_version(raw: str | None) -> dict[str, str] | str | None:
    """``3`` (every function) or ``onchain-api=3,onchain-ws=5``."""
    if raw is None:
        return None
    raw = raw.strip()
    if _VERSION.fullmatch(raw):
        return raw
    mapping: dict[str, str] = {}
    for part in raw.split(","):
        fn, sep, version = part.partition("=")
        if not sep or not fn.strip() or not _VERSION.fullmatch(version.strip()):
            raise pytest.UsageError(
                f"--to-version {raw!r}: expected a version number (e.g. 3) or function=version pairs "
                "(e.g. onchain-api=3,onchain-ws=5)"
            )
        mapping[fn.strip()] = version.strip()
    return mapping


def get_settings(config: pytest.Config) -> Settings:
    rootdir = Path(str(config.rootpath))
    policy_dir = Path(_get(config, "policy-dir") or rootdir / "policies")
    if not policy_dir.is_absolute():
        policy_dir = (Path.cwd() / policy_dir).resolve()
    release = _get(config, "release")
    if release is not None and not _RELEASE.fullmatch(release):
        raise pytest.UsageError(
            f"--release {release!r}: use 1-64 letters, digits, '.', '_', '+' or '-' starting with a letter or digit (e.g. v1.2.3)"
        )
    plan = bool(config.getoption("llamadeploy_plan") or config.getini("llamadeploy_plan"))
    emergency = bool(config.getoption("llamadeploy_emergency") or config.getini("llamadeploy_emergency"))
    reason = _get(config, "reason")
    if emergency and not reason:
        raise pytest.UsageError("--emergency needs --reason TEXT: the reason is recorded with the stage")
    alluredir = Path(config.getoption("llamadeploy_llama_alluredir") or config.getini("llamadeploy_alluredir"))
    artifacts = Path(config.getoption("llamadeploy_llama_artifacts") or config.getini("llamadeploy_artifacts"))
    return Settings(
        env=_get(config, "env"),
        stage=_get(config, "stage"),
        release=release,
        policy_dir=policy_dir,
        plan=plan,
        approved_by=_get(config, "approved-by"),
        to_version=parse_to_version(_get(config, "to-version")),
        emergency=emergency,
        reason=reason,
        alluredir=alluredir if alluredir.is_absolute() else Path.cwd() / alluredir,
        artifacts=artifacts if artifacts.is_absolute() else Path.cwd() / artifacts,
        rootdir=rootdir,
        backup_rds=bool(config.getoption("llamadeploy_backup_rds") or config.getini("llamadeploy_rds")),
        backup_all=bool(config.getoption("llamadeploy_backup_all") or config.getini("llamadeploy_all")),
        backup_id=_get(config, "backup-id"),
        narrowed=narrowing(config),
        observe=bool(config.getoption("llamadeploy_observe") or config.getini("llamadeploy_observe")),
    )


def misplaced_options(settings: Settings, stage: str, actions: Mapping[str, str]) -> list[str]:
    """One line per option given that ``stage`` does not use; ``actions`` maps the env's stages to their action."""
    problems = []
    for option, (attribute, uses) in STAGE_OPTIONS.items():
        if not getattr(settings, attribute) or actions.get(stage) in uses:
            continue
        if option == "--emergency" and (settings.narrowed or settings.observe):
            continue  # it allows a narrowed or an observed run in a guarded env (plugin.py), at any stage
        where = [name for name, action in actions.items() if action in uses]
        problems.append(f"{option} does not apply to --stage={stage} (action {actions.get(stage)}); it applies to "
                        f"{', '.join(where) or 'no stage of this env'} (action {' or '.join(uses)})")
    if settings.emergency and actions.get(stage) == "rollback" and settings.to_version is None \
            and not settings.narrowed and not settings.observe:
        problems.append("--emergency on a rollback overrides only a --to-version target that failed its gate; "
                        "without --to-version it changes nothing: leave it out")
    return problems


class _NamesApprover(Protocol):
    @property
    def approved_by(self) -> str | None: ...


def approver_from(settings: _NamesApprover, env_vars: list[str], environ: Mapping[str, str] | None = None) -> str | None:
    """--approved-by, or the first non-empty of the policy's approval variables (set by CI)."""
    if settings.approved_by:
        return settings.approved_by
    env: Mapping[str, str] = os.environ if environ is None else environ
    for name in env_vars:
        if env.get(name):
            return env[name]
    return None
