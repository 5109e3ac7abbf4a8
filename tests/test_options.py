"""Options through the command line and their ini twins; the plugin's import stays cheap."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.test_gate import project  # noqa: F401  (the stand-in gate project fixture)

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
    r = project.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.stdout.fnmatch_lines(["llamadeploy plan: deploy of release v7 in fastprod", "*approved by ini-approver*"])
    r = project.runpytest_subprocess("-p", "no:cacheprovider", "--release=v8", "--approved-by=cli", timeout=60)
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
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    assert r.ret == 0
    r.assert_outcomes(passed=1)


SHOW_BACKUP_SETTINGS = """
from pytest_llamadeploy.plugin import SETTINGS_KEY

def test_show(request):
    s = request.config.stash[SETTINGS_KEY]
    print(f"BACKUP rds={s.backup_rds} all={s.backup_all} id={s.backup_id}")
"""


def test_backup_options_have_ini_twins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_show=SHOW_BACKUP_SETTINGS)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", timeout=60)
    r.stdout.fnmatch_lines(["*BACKUP rds=False all=False id=None*"])
    pytester.makeini("""
        [pytest]
        llamadeploy_rds = true
        llamadeploy_all = true
        llamadeploy_backup_id = b-from-ini
    """)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", timeout=60)
    r.stdout.fnmatch_lines(["*BACKUP rds=True all=True id=b-from-ini*"])
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "--backup-id=b-from-cli", timeout=60)
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
