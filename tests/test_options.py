"""Options through the command line and their ini twins; the plugin's import stays cheap."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.forked import run_forked
from tests.test_gate import project  # noqa: F401  (the stand-in gate project fixture)

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)

pytest_plugins = ["pytester"]


def test_ini_twins_and_command_line_precedence(project: pytest.Pytester) -> None:  # noqa: F811
    project.makeini("""
        [pytest]
        llamadeploy_env = fastprod
        llamadeploy_stage = deploy
        llamadeploy_release = v7
        llamadeploy_approved_by = ini-approver
        llamadeploy_policy_dir = policies
        llamadeploy_plan = true
    """)
    r = run_forked(project, "-p", "no:cacheprovider", timeout=60)
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.stdout.fnmatch_lines(["llamadeploy plan: deploy of release v7 in fastprod", "*approved by ini-approver*"])
    r = run_forked(project, "-p", "no:cacheprovider", "--release=v8", "--approved-by=cli", timeout=60)
    r.stdout.fnmatch_lines(["llamadeploy plan: deploy of release v8 in fastprod", "*approved by cli*"])


def test_importing_the_plugin_loads_nothing_heavy() -> None:
    code = ("import sys, pytest_llamadeploy.plugin, pytest_llamadeploy.cli;"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'locust', 'gevent', 'boto3', 'botocore', 'moto', 'scipy', 'matplotlib', 'httpx', 'psycopg'});"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_project_tests_need_no_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_ok():\n    assert 1 + 1 == 2\n")
    r = run_forked(pytester, "-p", "no:cacheprovider", timeout=60)
    assert r.ret == 0
    r.assert_outcomes(passed=1)


REPO = Path(__file__).parent.parent


@pytest.fixture
def no_aws(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """The repository's policies and no AWS configuration at all (nothing may be read from anywhere)."""
    shutil.copytree(REPO / "policies", pytester.path / "policies")
    for name in list(os.environ):
        if name.startswith("AWS_") or name in ("LLAMADEPLOY_APPROVED_BY", "LLAMADEPLOY_SANDBOX_DIR"):
            monkeypatch.delenv(name)
    missing = str(pytester.path / "no-such-aws-file")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance metadata service
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return pytester


@pytest.mark.parametrize("env", ["./prod", "prod/", "../policies/prod", "PROD", "defaults"])
def test_env_that_is_not_a_policy_file_name_is_refused(no_aws: pytest.Pytester, env: str) -> None:
    # Finding 6: `--env=./prod` ran prod's stages under the ledger key `./prod` (another lock, another history).
    r = run_forked(no_aws, "-p", "no:cacheprovider", f"--env={env}", "--stage=deploy", "--release=v1",
                                    "--plan", timeout=60)
    assert r.ret == 4
    r.stderr.fnmatch_lines([f"*env {env!r}*allowed: dev, prod, sandbox, sandbox-aws, staging"])
    assert "Traceback" not in r.stderr.str()


def test_release_with_a_trailing_newline_is_refused(no_aws: pytest.Pytester) -> None:
    # `match` with `$` accepted "v1\n" (`$` matches before a final newline).
    r = run_forked(no_aws, "-p", "no:cacheprovider", "--env=staging", "--stage=deploy", "--release=v1\n",
                                    "--plan", timeout=60)
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*--release 'v1\\n': use 1-64 letters*"])


@pytest.mark.parametrize(("args", "lines"), [
    (["--stage=verify", "--to-version=3"],
     ["*--to-version does not apply to --stage=verify (action none); it applies to rollback (action rollback)"]),
    (["--stage=verify", "--rds"], ["*--rds does not apply to --stage=verify (action none); it applies to backup (action backup)"]),
    (["--stage=backup", "--backup-id=b-1"], ["*--backup-id does not apply to --stage=backup (action backup); it applies to restore*"]),
    (["--stage=restore", "--all"], ["*--all does not apply to --stage=restore (action restore); it applies to backup*"]),
    (["--stage=deploy", "--release=v1", "--emergency", "--reason=hotfix"],
     ["*--emergency does not apply to --stage=deploy (action deploy); it applies to preflight, rollback "
      "(action preflight or rollback)"]),
    (["--stage=rollback", "--emergency", "--reason=hotfix"],
     ["*--emergency on a rollback overrides only a --to-version target that failed its gate*"]),
    (["--stage=verify", "--to-version=3", "--rds", "--backup-id=b-1"],
     ["*options that this stage would ignore; nothing was changed:", "*--to-version does not apply*",
      "*--rds does not apply*", "*--backup-id does not apply*"]),
])
def test_options_the_stage_does_not_use_are_refused(no_aws: pytest.Pytester, args: list[str], lines: list[str]) -> None:
    # Before, `--to-version`, `--rds` or `--backup-id` on verify were silently ignored.
    r = run_forked(no_aws, "-p", "no:cacheprovider", "--env=staging", *args, timeout=60)
    assert r.ret == 4
    r.stderr.fnmatch_lines(lines)


def test_plan_without_aws_credentials_is_a_usage_error(no_aws: pytest.Pytester) -> None:
    # Before: exit 1 and botocore's NoCredentialsError traceback.
    r = run_forked(no_aws, "-p", "no:cacheprovider", "--env=staging", "--stage=deploy", "--release=v1",
                                    "--plan", timeout=60)
    assert r.ret == 4
    r.stderr.fnmatch_lines(["*--plan for deploy in staging needs to read the alias and the ledger, and AWS could not be "
                            "read: Unable to locate credentials. Configure credentials*nothing was changed"])
    assert "Traceback" not in r.stderr.str() + r.stdout.str()
SHOW_BACKUP_SETTINGS = """
from pytest_llamadeploy.plugin import SETTINGS_KEY

def test_show(request):
    s = request.config.stash[SETTINGS_KEY]
    print(f"BACKUP rds={s.backup_rds} all={s.backup_all} id={s.backup_id}")
"""


def test_backup_options_have_ini_twins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_show=SHOW_BACKUP_SETTINGS)
    r = run_forked(pytester, "-p", "no:cacheprovider", "-s", timeout=60)
    r.stdout.fnmatch_lines(["*BACKUP rds=False all=False id=None*"])
    pytester.makeini("""
        [pytest]
        llamadeploy_rds = true
        llamadeploy_all = true
        llamadeploy_backup_id = b-from-ini
    """)
    r = run_forked(pytester, "-p", "no:cacheprovider", "-s", timeout=60)
    r.stdout.fnmatch_lines(["*BACKUP rds=True all=True id=b-from-ini*"])
    r = run_forked(pytester, "-p", "no:cacheprovider", "-s", "--backup-id=b-from-cli", timeout=60)
    r.stdout.fnmatch_lines(["*BACKUP rds=True all=True id=b-from-cli*"])


def test_every_option_has_an_ini_twin() -> None:
    """The README's promise, checked against ``pytest --help``: each --option of the group has llamadeploy_<name>."""
    shown = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], capture_output=True,
                           text=True, timeout=60, check=True).stdout
    group = shown[shown.index("llamadeploy deployment gates:"):]
    group = group[:group.index("\n\n")]
    options = re.findall(r"^  (--[a-z][a-z-]+)", group, flags=re.MULTILINE)
    inis = set(re.findall(r"^  (llamadeploy_\w+) \(", shown, flags=re.MULTILINE))
    missing = [o for o in options if "llamadeploy_" + o[2:].replace("-", "_").removeprefix("llama_") not in inis]
    assert len(options) >= 17, options
    assert not missing, f"options without an ini twin: {missing}"
