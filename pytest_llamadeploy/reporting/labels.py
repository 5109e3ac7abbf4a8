"""Labels and parameters that let a reviewer navigate a report by environment, stage and suite.

``apply_labels`` may be called from any hook before the test's teardown: labels
become ``allure_label`` markers (allure-pytest reads them at teardown), and the
parameters are set on the running Allure test, or deferred to the test's setup
when the call comes during collection (no Allure test exists yet then).
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

_ALLURE_LABEL_MARK = "allure_label"  # allure-pytest's marker name (allure_pytest.utils.ALLURE_LABEL_MARK)
_PENDING = pytest.StashKey[dict[str, str]]()
_APPLIER_NAME = "llamadeploy-allure-parameters"


def allure_active(config: pytest.Config) -> bool:
    """True when allure-pytest is collecting results in this session (``--alluredir`` given)."""
    return config.pluginmanager.getplugin("allure_listener") is not None


def format_versions(versions: Mapping[str, object]) -> str:
    """``{"blue": "v1 (3)", "green": "v2 (4)"}`` -> ``blue=v1 (3), green=v2 (4)`` (stable order)."""
    return ", ".join(f"{key}={versions[key]}" for key in sorted(versions))


def label_pairs(*, env: str, stage: str, suite: str) -> list[tuple[str, str]]:
    """The navigation labels: Behaviors (epic/feature/story) and Suites (parentSuite/suite/subSuite)."""
    return [
        ("epic", env),
        ("feature", stage),
        ("story", suite),
        ("parentSuite", env),
        ("suite", stage),
        ("subSuite", suite),
    ]


#: Parameters in the history id (allure-pytest hashes the test's full name with every parameter that is
#: not excluded): the same gate test in another env, stage or release is another result, never a retry
#: of this one. A rehearsal runs the health suite of two releases through four stages each in one report.
IDENTITY = ("env", "stage", "release")


def parameters(*, env: str, stage: str, release: str, versions: Mapping[str, object]) -> dict[str, str]:
    return {"env": env, "stage": stage, "release": release, "versions": format_versions(versions)}


def apply_labels(item: pytest.Item, *, env: str, stage: str, release: str, suite: str,
                 versions: Mapping[str, object]) -> None:
    """Label a gate test for Allure; a no-op when Allure is not collecting."""
    config = item.config
    if not allure_active(config):
        return
    for label_type, value in label_pairs(env=env, stage=stage, suite=suite):
        item.add_marker(pytest.mark.allure_label(value, label_type=label_type))
    params = parameters(env=env, stage=stage, release=release, versions=versions)
    if _running_in_allure(item):
        _set_parameters(params)
        return
    item.stash[_PENDING] = params
    if not config.pluginmanager.has_plugin(_APPLIER_NAME):
        config.pluginmanager.register(_ParameterApplier(), _APPLIER_NAME)


def _running_in_allure(item: pytest.Item) -> bool:
    # allure-pytest schedules its test result when the runtest protocol starts;
    # before that (collection) there is no test to put a parameter on.
    listener = item.config.pluginmanager.getplugin("allure_listener")
    cache = getattr(listener, "_cache", None)
    return bool(cache is not None and cache.get(item.nodeid))


def _set_parameters(params: Mapping[str, str]) -> None:
    import allure

    for name, value in params.items():
        # the versions follow from the release: shown, but not a second key of the history id
        allure.dynamic.parameter(name, value, excluded=name not in IDENTITY)
    _unquote(params)


def _unquote(params: Mapping[str, str]) -> None:
    """Show ``v1.2.3``, not ``'v1.2.3'``: allure-pytest stores every parameter as ``repr(value)``."""
    from allure_commons import plugin_manager

    for plugin in plugin_manager.get_plugins():
        logger = getattr(plugin, "allure_logger", None)
        test = logger.get_test(None) if logger is not None and hasattr(logger, "get_test") else None
        for parameter in getattr(test, "parameters", None) or ():
            if parameter.name in params:
                parameter.value = params[parameter.name]


class _ParameterApplier:
    """Registered lazily by ``apply_labels``: applies parameters stashed during collection."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        params = item.stash.get(_PENDING, None)
        if params and _running_in_allure(item):
            _set_parameters(params)
