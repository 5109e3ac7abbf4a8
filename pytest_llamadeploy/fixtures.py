"""Fixtures gate tests use. Registered by plugin.py; no hooks here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported when a fixture runs: boto3 and pydantic stay out of runs without a gate
    from .context import StageContext


def _run_dir(config: pytest.Config) -> Path | None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get("llamadeploy_run_dir"):
        return Path(workerinput["llamadeploy_run_dir"])
    from .plugin import RUNNER_KEY

    runner = config.stash.get(RUNNER_KEY, None)
    return runner.run_dir if runner is not None else None


@pytest.fixture(scope="session")
def llama(request: pytest.FixtureRequest) -> StageContext:
    """The stage this session runs: env, stage, release, versions, targets, policy, bake window.

    The controller performed the stage's action before any gate test ran; this
    reads what it wrote, so every xdist worker sees the same stage.
    """
    from .context import StageContext
    from .stage import context_path

    run_dir = _run_dir(request.config)
    if run_dir is None:
        pytest.fail("gate tests need a stage: run with --env=ENV --stage=STAGE --release=TAG", pytrace=False)
    path = context_path(run_dir)
    if not path.is_file():
        pytest.fail(f"the stage's action wrote no context at {path} (did it fail before the tests?)", pytrace=False)
    return StageContext.load(path)
