"""--locust-processes / --locust-expect-workers / --locust-master-bind and their ini twins."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# The llamadeploy plugin registers the options (plugin.py calls load.options.add_options).
CONFTEST = '''
from pytest_llamadeploy.load.options import LoadOptions

def pytest_configure(config):
    config.load_options = LoadOptions.from_config(config)
'''
TEST = '''
def test_show(pytestconfig):
    o = pytestconfig.load_options
    print(f"OPTIONS processes={o.processes} workers={o.expect_workers} bind={o.master_bind_host}:{o.master_bind_port}")
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_show=TEST)
    return pytester


def test_defaults(project: pytest.Pytester) -> None:
    result = project.runpytest("-s")
    result.stdout.fnmatch_lines(["*OPTIONS processes=1 workers=0 bind=127.0.0.1:5557*"])
    assert result.ret == 0


def test_defaults_when_the_options_are_not_registered(project: pytest.Pytester) -> None:
    result = project.runpytest("-s", "-p", "no:llamadeploy")
    result.stdout.fnmatch_lines(["*OPTIONS processes=1 workers=0 bind=127.0.0.1:5557*"])


def test_command_line(project: pytest.Pytester) -> None:
    result = project.runpytest("-s", "--locust-expect-workers", "2", "--locust-master-bind", "0.0.0.0:6000")
    result.stdout.fnmatch_lines(["*OPTIONS processes=1 workers=2 bind=0.0.0.0:6000*"])


def test_ini_twins_and_command_line_wins(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nllamadeploy_locust_processes = 2\nllamadeploy_locust_master_bind = 127.0.0.1:7000\n")
    project.runpytest("-s").stdout.fnmatch_lines(["*OPTIONS processes=2 workers=0 bind=127.0.0.1:7000*"])
    project.runpytest("-s", "--locust-processes", "3").stdout.fnmatch_lines(["*OPTIONS processes=3*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--locust-processes", "0"], "--locust-processes '0': expected a whole number >= 1"),
        (["--locust-expect-workers", "many"], "--locust-expect-workers 'many': expected a whole number >= 0"),
        (["--locust-master-bind", "localhost"], "expected HOST:PORT"),
        (["--locust-processes", "2", "--locust-expect-workers", "2"], "do not combine"),
    ],
)
def test_bad_values_are_usage_errors(project: pytest.Pytester, args: list[str], message: str) -> None:
    result = project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str() + result.stdout.str()
