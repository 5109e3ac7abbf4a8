"""Options through the command line and their ini twins; the plugin's import stays cheap."""

from __future__ import annotations

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
