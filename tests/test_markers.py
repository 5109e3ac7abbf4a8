"""The split behind ``pytest tests -m "not sandbox"``: a test that starts a process must say so."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

UNMARKED_AND_MARKED = '''
import subprocess
import pytest

pytest_plugins = ["pytester"]

def test_unmarked_starts_a_process():
    subprocess.run(["true"], check=True)

@pytest.mark.sandbox
def test_marked_starts_a_process():
    subprocess.run(["true"], check=True)

def test_unmarked_pure():
    assert sum([1, 2]) == 3
'''


@pytest.mark.sandbox  # its marked inner test starts a process in this process
def test_an_unmarked_test_that_starts_a_process_fails_naming_the_mark(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=UNMARKED_AND_MARKED)
    result = pytester.runpytest_inprocess("-p", "tests.conftest", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked_starts_a_process started a process (*true*): "
                                 "mark it @pytest.mark.sandbox*"])
    deselected = pytester.runpytest_inprocess("-p", "tests.conftest", "-p", "no:cacheprovider", "-m", "not sandbox")
    deselected.assert_outcomes(passed=1, failed=1)
