"""Policies: loading, errors that name file/key/value/fix, the guard, the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pytest_llamadeploy.cli import main as cli
from pytest_llamadeploy.guard import check_guard
from pytest_llamadeploy.policy import PolicyError, load_policy
from pytest_llamadeploy.units import parse_duration, parse_rate, parse_threshold

POLICIES = Path(__file__).parent.parent / "policies"


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    shutil.copytree(POLICIES, tmp_path / "policies")
    return tmp_path / "policies"


def test_runbook_numbers_live_in_prod() -> None:
    p = load_policy(POLICIES, "prod").policy
    assert p.plan == ["deploy", "shift10", "shift50", "shift100"]
    assert [p.stages[s].weight for s in ("deploy", "shift10", "shift50")] == [0.0, 0.1, 0.5]
    assert [p.stages[s].bake for s in ("shift10", "shift50", "shift100")] == [300, 300, 600]
    assert p.stages["shift100"].keep_previous == 86400
    assert p.approval.required and p.rollback_on_failure
    # Each runbook line on the functions' per-version signal (service.*) and on AWS's metrics.
    key = {r.signal: (r.op, r.threshold) for r in p.key_metrics.values()}
    assert key == {"service.error_rate": ("<", 0.01), "lambda.error_rate": ("<", 0.01),
                   "service.latency": ("<", 500.0), "lambda.duration": ("<", 500.0), "apigw.5xx": ("<=", 0.0),
                   "service.ws_connect_error_rate": ("<", 0.001), "apigw.ws_connect_error_rate": ("<", 0.001),
                   "cache.hit_rate": (">", 0.8), "service.cache_hit_rate": (">", 0.8),
                   "dynamodb.throttles": ("<=", 0.0)}
    triggers = {r.signal: (r.threshold, r.window) for r in p.rollback_triggers.values()}
    assert triggers["service.error_rate"][0] == 0.05 and triggers["lambda.error_rate"][0] == 0.05
    assert triggers["lambda.throttle_rate"][0] == 0.001
    assert triggers["apigw.5xx"] == (10.0, 300.0) and triggers["service.ws_connect_error_rate"][0] == 0.01
    # AWS's own metrics as AWS serves them: a minute per datapoint, up to 3 minutes late.
    assert (p.metrics.aws.resolution, p.metrics.aws.lag) == (60, 180)
    assert p.metrics.service.resolution == 1
    perf = p.performance
    assert (perf.api_p95, perf.ws_p95, perf.db_p95, perf.cache_hit_rate) == (200, 100, 50, 0.8)


def test_dev_staging_all_at_once_and_sandbox_mirrors_prod() -> None:
    for env in ("dev", "staging"):
        p = load_policy(POLICIES, env).policy
        assert p.plan == ["deploy", "verify"] and p.stages["deploy"].weight == 1.0 and not p.approval.required
    prod, sandbox = load_policy(POLICIES, "prod").policy, load_policy(POLICIES, "sandbox").policy
    assert sandbox.plan == prod.plan
    for section in ("rollback_triggers", "key_metrics"):
        same = {n: (r.signal, r.op, r.threshold) for n, r in getattr(prod, section).items()}
        assert {n: (r.signal, r.op, r.threshold) for n, r in getattr(sandbox, section).items()} == same
    assert sandbox.performance.api_p95 == prod.performance.api_p95
    assert all(10 <= sandbox.stages[s].bake <= 20 for s in ("shift10", "shift50", "shift100"))


@pytest.mark.parametrize(("raw", "seconds"), [("5m", 300), ("10s", 10), ("24h", 86400), ("200ms", 0.2), (7, 7)])
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


def test_units_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("five minutes")
    with pytest.raises(ValueError, match="outside"):
        parse_rate("150%")
    assert parse_rate("0.1%") == pytest.approx(0.001) and parse_threshold("500ms") == 500


def test_error_names_file_key_value_and_fix(pdir: Path) -> None:
    (pdir / "prod.yaml").write_text((pdir / "prod.yaml").read_text().replace("bake: 5m", "bake: five minutes", 1))
    with pytest.raises(PolicyError) as info:
        load_policy(pdir, "prod")
    (problem,) = info.value.problems
    assert str(pdir / "prod.yaml") in problem and "stages.shift10.bake" in problem
    assert "'five minutes'" in problem and "10s, 5m" in problem


def test_error_in_parent_names_the_parent(pdir: Path) -> None:
    (pdir / "defaults.yaml").write_text((pdir / "defaults.yaml").read_text().replace("threshold: 1%", "threshold: lots", 1))
    with pytest.raises(PolicyError) as info:
        load_policy(pdir, "sandbox")
    assert any(str(pdir / "defaults.yaml") in p and "key_metrics.error_rate.threshold" in p for p in info.value.problems)


def test_unknown_key_and_unknown_env(pdir: Path) -> None:
    (pdir / "staging.yaml").write_text((pdir / "staging.yaml").read_text() + "\nrolback_on_failure: true\n")
    with pytest.raises(PolicyError, match="rolback_on_failure.*unknown key"):
        load_policy(pdir, "staging")
    with pytest.raises(PolicyError, match="no policy for env 'qa'; allowed: dev, prod, sandbox, sandbox-aws, staging"):
        load_policy(pdir, "qa")


def test_literal_password_refused(pdir: Path) -> None:
    text = (pdir / "staging.yaml").read_text().replace("${LLAMA_POSTGRES_DSN}", "postgresql://admin:s3cret@db/x")
    (pdir / "staging.yaml").write_text(text)
    with pytest.raises(PolicyError, match="targets.postgres_dsn.*literal password") as info:
        load_policy(pdir, "staging")
    assert "s3cret" in str(info.value)  # the file's own value is shown to its author: it is already in their repo


def test_guard_passes_the_shipped_prod() -> None:
    assert check_guard(load_policy(POLICIES, "prod").policy) == []


@pytest.mark.parametrize(("old", "new", "rule"), [
    ("  shift10:\n    action: shift\n    weight: 10%\n    bake: 5m", "  shift10:\n    action: shift\n    weight: 10%\n    bake: 1m",
     "shift10 bakes at least 300s"),
    ("approval:\n  required: true", "approval:\n  required: false", "prod requires approval"),
    ("rollback_on_failure: true", "rollback_on_failure: false", "prod rolls back on failure"),
])
def test_guard_catches_a_loosened_prod(pdir: Path, old: str, new: str, rule: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = (pdir / "prod.yaml").read_text()
    assert old in text
    (pdir / "prod.yaml").write_text(text.replace(old, new, 1))
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    assert rule in err and "prod.yaml" in err


def test_guard_catches_looser_threshold_inherited_from_defaults(pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (pdir / "prod.yaml").write_text((pdir / "prod.yaml").read_text() + "\nrollback_triggers:\n  lambda_error_rate:\n    threshold: 20%\n")
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    assert "rollback_triggers.lambda.error_rate no looser than the runbook" in err and "<= 0.2" in err


def test_policy_check_ok_and_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["policy", "check", str(POLICIES)]) == 0
    assert "ok: prod" in capsys.readouterr().out
    assert cli(["policy", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "stages" in schema["properties"] and schema["title"] == "llamadeploy policy"


@pytest.mark.parametrize("env", ["./prod", "prod/", "../policies/prod", "PROD", "Prod", "prod.yaml", "prod ", " prod",
                                 "defaults", "", "pr\nod", str(POLICIES / "prod")])
def test_env_is_exactly_the_name_of_a_policy_file(pdir: Path, env: str) -> None:
    # `--env=./prod` loaded prod's policy and aliases but keyed the ledger `./prod`: another lock.
    with pytest.raises(PolicyError) as info:
        load_policy(pdir, env)
    (problem,) = info.value.problems
    assert f"env {env!r}" in problem and problem.endswith("allowed: dev, prod, sandbox, sandbox-aws, staging")


def test_extends_names_a_file_of_the_folder_not_a_path(pdir: Path, tmp_path: Path) -> None:
    shutil.copy(pdir / "prod.yaml", tmp_path / "elsewhere.yaml")
    text = (pdir / "staging.yaml").read_text()
    for parent in ("../elsewhere", "./defaults", "Defaults"):
        (pdir / "staging.yaml").write_text(text.replace("extends: defaults", f"extends: {parent}"))
        with pytest.raises(PolicyError, match=rf"staging.yaml: extends: '{re.escape(parent)}' must be the name of "
                                              r"another policy file in .*allowed: defaults, dev, prod, sandbox, sandbox-aws, staging"):
            load_policy(pdir, "staging")


def test_policy_check_reports_files_that_cannot_be_envs(pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(pdir / "staging.yaml", pdir / "Staging.yaml")
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    assert f"{pdir / 'Staging.yaml'}: 'Staging' cannot be an env name" in err


def test_which_suites_may_write_test_data(pdir: Path) -> None:
    # Issue 13: the policy says which suites write in which env; prod's default is the conservative one.
    from pytest_llamadeploy.testdata import write_refusal

    prod = load_policy(pdir, "prod").policy
    assert prod.test_data.write == ["functional"]
    refusal = write_refusal(prod, "prod", "performance")
    assert refusal is not None and "test_data.write (functional) does not allow it" in refusal
    assert write_refusal(prod, "prod", "functional") is None
    assert load_policy(pdir, "staging").policy.test_data.write == ["functional", "performance"]
    (pdir / "qa.yaml").write_text("extends: staging\ntest_data:\n  write: [functional, load]\n")
    with pytest.raises(PolicyError) as err:
        load_policy(pdir, "qa")
    assert "qa.yaml" in str(err.value) and "test_data.write" in str(err.value)
    assert "'load': not a suite that writes test data; use functional and/or performance" in str(err.value)


# -- custom signals and metric sources (metrics.signals, metrics.sources) ---------------------

_CUSTOM = """\
extends: sandbox
metrics:
  sources:
    prom:
      provider: prometheus
      url: http://127.0.0.1:9090
      resolution: 5s
      lag: 10s
  signals:
    custom.search_error_rate:
      source: service
      unit: rate
      metric: SearchErrors
      denominator: [Searches]
      samples_noun: searches
    custom.queue_age:
      source: aws
      scope: global
      unit: ms
      namespace: AWS/SQS
      metric: ApproximateAgeOfOldestMessage
      statistic: p99
      dimensions: {QueueName: onchain-alerts}
    custom.prom_5xx:
      source: prom
      unit: count
      query: 'sum(http_5xx_total{function="$function",version="$version"})'
rollback_triggers:
  search_error_rate:
    signal: custom.search_error_rate
    op: "<"
    threshold: 2%
    window: 15s
    min_samples: 10
  queue_age:
    signal: custom.queue_age
    op: "<"
    threshold: 60000
    window: 60s
  prom_5xx:
    signal: custom.prom_5xx
    op: "<="
    threshold: 3
    window: 30s
"""


def test_undeclared_custom_signal_is_refused_by_policy_check(pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 16: a made-up signal must be refused by `policy check`, before any stage moves traffic.
    (pdir / "made.yaml").write_text("extends: sandbox\nrollback_triggers:\n  made_up:\n    signal: custom.x\n"
                                    "    op: '<'\n    threshold: 1%\n    window: 15s\n")
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "made_up" in x)
    assert str(pdir / "made.yaml") in line and "rollback_triggers.made_up.signal = 'custom.x'" in line
    assert "is not known: declare it under metrics.signals" in line and "or use one of apigw.5xx" in line


def test_custom_signals_declared_in_policy_are_read_as_declared(pdir: Path) -> None:
    from pytest_llamadeploy.metrics.evaluate import plan_poll, plan_targets
    from pytest_llamadeploy.metrics.signals import get_signal

    (pdir / "custom.yaml").write_text(_CUSTOM)
    policy = load_policy(pdir, "custom").policy
    assert cli(["policy", "check", str(pdir)]) == 0
    kinds = {n: get_signal(n, policy=policy).kind for n in policy.metrics.signals}
    assert kinds == {"custom.search_error_rate": "ratio", "custom.queue_age": "percentile", "custom.prom_5xx": "sum"}
    versions = {"new": {"onchain-api": "7"}, "old": {"onchain-api": "6"}}
    plan = plan_poll(plan_targets(policy.rollback_triggers, policy, versions, 1000.0, 1100.0), 1100.0)
    specs = {(s.source, s.namespace, s.metric, s.dims, s.stat, s.period) for s in plan.specs}
    # The functions' own EMF namespace and dimensions, per version, at the source's resolution.
    assert ("service", "LlamaDeploy/Service", "SearchErrors", (("FunctionName", "onchain-api"), ("Version", "7")),
            "Sum", 1) in specs
    assert ("service", "LlamaDeploy/Service", "Searches", (("FunctionName", "onchain-api"), ("Version", "6")),
            "Sum", 1) in specs
    # A global signal: its one declared series, the percentile over the window.
    assert any(s[:4] == ("aws", "AWS/SQS", "ApproximateAgeOfOldestMessage", (("QueueName", "onchain-alerts"),))
               and s[4] == "p99" for s in specs)
    # Prometheus: the PromQL with the version's labels to fill in, at the source's 5-s resolution.
    assert ("prom", "PromQL", 'sum(http_5xx_total{function="$function",version="$version"})',
            (("function", "onchain-api"), ("version", "7")), "Sum", 5) in specs


@pytest.mark.parametrize(("old", "new", "key", "fix"), [
    ("      url: http://127.0.0.1:9090\n", "", "metrics.sources.prom", "needs url: http://HOST:PORT"),
    ("url: http://127.0.0.1:9090", "url: http://admin:pw@127.0.0.1:9090", "metrics.sources.prom",
     "reference an environment variable"),
    ("resolution: 5s\n      lag: 10s", "resolution: 1.5s\n      lag: 10s", "metrics.sources.prom", "whole seconds"),
    ("version=\"$version\"})'", "version=\"$ver\"})'", "metrics.signals.custom.prom_5xx.query",
     "unknown placeholder $ver"),
    ("      metric: SearchErrors\n", "", "metrics.signals.custom.search_error_rate.metric", "needs metric"),
    ("      source: aws\n", "      source: datadog\n", "metrics.signals.custom.queue_age.source",
     "declare it under metrics.sources"),
    ("    custom.prom_5xx:", "    prom_5xx:", "metrics.signals.prom_5xx", "custom.<name>"),
    ("dimensions: {QueueName: onchain-alerts}", "dimensions: {QueueName: $function}",
     "metrics.signals.custom.queue_age.dimensions.QueueName", "none in a global signal"),
])
def test_bad_custom_signal_or_source_names_file_key_and_fix(pdir: Path, old: str, new: str, key: str,
                                                           fix: str) -> None:
    assert old in _CUSTOM
    (pdir / "custom.yaml").write_text(_CUSTOM.replace(old, new))
    with pytest.raises(PolicyError) as info:
        load_policy(pdir, "custom")
    line = next((p for p in info.value.problems if key in p), "\n".join(info.value.problems))
    assert str(pdir / "custom.yaml") in line and key in line and fix in line, line


def test_readme_prometheus_example_is_a_valid_policy(pdir: Path) -> None:
    # The README's "Extend it" example, as written, loads and passes `policy check`.
    readme = (POLICIES.parent / "README.md").read_text()
    section = readme.split("## Extend it", 1)[1]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
    example = next(b for b in blocks if "provider: prometheus" in b)
    (pdir / "withprom.yaml").write_text("extends: sandbox\n" + example)
    policy = load_policy(pdir, "withprom").policy
    assert policy.metrics.sources["prom"].url == "${PROMETHEUS_URL}"
    assert policy.rollback_triggers["prom_error_rate"].signal == "custom.prom_error_rate"
    assert cli(["policy", "check", str(pdir)]) == 0
