"""The guard (issue 12, finding 5): every way prod can loosen is refused, by `policy check` and by pytest itself."""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from pytest_llamadeploy import guard
from pytest_llamadeploy.cli import main as cli
from pytest_llamadeploy.guard import check_guard, guard_problems, longest_step
from pytest_llamadeploy.policy import load_policy
from tests.support.aws_setup import FUNCTIONS, alias_state, lambda_client
from tests.support.forked import run_forked
from tests.test_policy import pdir  # noqa: F401  (a copy of policies/ to edit)

REPO = Path(__file__).parent.parent
pytest_plugins = ["pytester"]


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def edit(path: Path, override: Mapping[str, Any]) -> None:
    """Rewrite a policy file with ``override`` merged in (YAML refuses a second `stages:` appended)."""
    path.write_text(yaml.safe_dump(_merge(yaml.safe_load(path.read_text()), override), sort_keys=False))


def test_shipped_policies_pass_and_only_prod_is_guarded(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["policy", "check", str(REPO / "policies")]) == 0
    assert capsys.readouterr().out.count("ok: ") == 5
    for env in ("dev", "staging", "sandbox", "sandbox-aws", "prod"):
        assert check_guard(load_policy(REPO / "policies", env).policy) == []
    # The sandbox rehearses prod with seconds-long bakes and a 5-minute lease: it would fail the floor.
    sandbox = load_policy(REPO / "policies", "sandbox").policy
    rules = {v.rule for v in check_guard(sandbox.model_copy(update={"name": "prod"}))}
    assert {"shift10 bakes at least 300s", "the lease covers the longest step", "prod's gate acts on AWS"} <= rules


def test_lease_covers_the_longest_step_of_shipped_prod() -> None:
    prod = load_policy(REPO / "policies", "prod").policy
    need, what = longest_step(prod)
    assert (need, what) == (1800.0, "backup.timeout")  # backup 30m > deploy 20m > shift100 10m + 1m load + 5m
    assert prod.ledger.lease >= need


# (override of prod.yaml, text that `policy check` must print: key = value, and what is allowed)
LOOSENED: list[tuple[str, dict[str, Any], str]] = [
    ("deploy_weight", {"stages": {"deploy": {"weight": "100%"}}}, "stages.deploy.weight = 1.0: breaks guard rule 'deploy moves at most 0%' (RUNBOOK.md:101-104): <= 0%"),
    ("shift10_promotes", {"stages": {"shift10": {"action": "promote", "weight": None}}}, "stages.shift10.action = 'promote': breaks guard rule 'shift10 is a shift' (RUNBOOK.md:106-110): must be shift"),
    ("shift10_weight", {"stages": {"shift10": {"weight": "20%"}}}, "stages.shift10.weight = 0.2: breaks guard rule 'shift10 moves at most 10%'"),
    ("shift50_weight", {"stages": {"shift50": {"weight": "90%"}}}, "stages.shift50.weight = 0.9: breaks guard rule 'shift50 moves at most 50%'"),
    ("shift100_shifts", {"stages": {"shift100": {"action": "shift", "weight": "99%"}}}, "stages.shift100.action = 'shift': breaks guard rule 'shift100 is a promote'"),
    ("deploy_suites", {"stages": {"deploy": {"suites": ["health"]}}}, "stages.deploy.suites = ['health']: breaks guard rule \"deploy runs the runbook's suites\" (RUNBOOK.md:101-104): must include health, functional (missing functional)"),
    ("shift10_suites", {"stages": {"shift10": {"suites": []}}}, "stages.shift10.suites = []: breaks guard rule \"shift10 runs the runbook's suites\""),
    ("shift50_suites", {"stages": {"shift50": {"suites": ["health", "monitoring"]}}}, "stages.shift50.suites = ['health', 'monitoring']: breaks guard rule \"shift50 runs the runbook's suites\" (RUNBOOK.md:112-115): must include health, monitoring, compare (missing compare)"),
    ("shift100_suites", {"stages": {"shift100": {"suites": ["health", "functional", "monitoring"]}}}, "stages.shift100.suites = ['health', 'functional', 'monitoring']: breaks guard rule \"shift100 runs the runbook's suites\" (RUNBOOK.md:117-120, 204-242): must include health, functional, performance, monitoring (missing performance)"),
    ("rollback_unwatched", {"stages": {"rollback": {"bake": "1m"}}}, "stages.rollback.bake = '1m': breaks guard rule 'rollback bakes at least 600s' (RUNBOOK.md:151-166): >= 10m"),
    ("approval_var", {"approval": {"env_vars": ["DEPLOYER"]}}, "approval.env_vars.0 = 'DEPLOYER': breaks guard rule 'the approver comes from an approval'"),
    ("ledger_backend", {"ledger": {"backend": "file"}}, "ledger.backend = 'file': breaks guard rule \"prod's lock and history are shared by every CI job\" (RUNBOOK.md:72-76): must be dynamodb"),
    ("lease_short", {"ledger": {"lease": "10m"}}, "ledger.lease = '10m': breaks guard rule 'the lease covers the longest step': >= 30m (backup.timeout)"),
    ("lease_vs_deploy", {"deploy": {"timeout": "1h"}}, "ledger.lease = '30m': breaks guard rule 'the lease covers the longest step': >= 1h (deploy.timeout)"),
    ("lease_vs_bake", {"stages": {"shift100": {"bake": "40m"}}}, "ledger.lease = '30m': breaks guard rule 'the lease covers the longest step': >= 46m (stages.shift100.bake 40m + performance.duration 1m + 5m for the other suites)"),
    ("probe_rate", {"watch": {"probe_rate": 0}}, "watch.probe_rate = 0.0: breaks guard rule 'prod probes the new version during a bake'"),
    ("interval", {"watch": {"interval": "2m"}}, "watch.interval = '2m': breaks guard rule 'the watch polls every minute at least' (RUNBOOK.md:110, 115, 145-149): <= 1m"),
    ("provider_errors", {"watch": {"provider_error_limit": 50}}, "watch.provider_error_limit = 50: breaks guard rule 'provider errors end the bake soon'"),
    ("p95_ratio", {"compare": {"max_p95_ratio": 3}}, "compare.max_p95_ratio = 3.0: breaks guard rule 'compare can fail a slower or failing new version' (RUNBOOK.md:114): <= 2"),
    ("p95_delta", {"compare": {"min_p95_delta": "5s"}}, "compare.min_p95_delta = 5000.0: breaks guard rule 'compare can fail a slower or failing new version' (RUNBOOK.md:114): <= 100 ms"),
    ("tolerance", {"compare": {"tolerance": 2}}, "compare.tolerance = 2.0:"),
    ("error_rate_diff", {"compare": {"max_error_rate_diff": "5%"}}, "compare.max_error_rate_diff = 0.05:"),
    ("alpha", {"compare": {"alpha": 1e-9}}, "compare.alpha = 1e-09: breaks guard rule \"compare's rank test can reject\" (RUNBOOK.md:114): in [0.001, 1)"),
    ("sandbox_endpoint", {"aws": {"endpoint": "sandbox"}}, "aws.endpoint = 'sandbox': breaks guard rule \"prod's gate acts on AWS\""),
    ("sandbox_targets", {"targets": {"source": "sandbox"}}, "targets.source = 'sandbox': breaks guard rule \"prod's gates probe production\""),
    ("preflight_suites", {"stages": {"preflight": {"suites": []}}}, "stages.preflight.suites = []: breaks guard rule \"preflight runs the runbook's suites\" (RUNBOOK.md:25-33)"),
    ("verify_suites", {"stages": {"verify": {"suites": ["health"]}}}, "stages.verify.suites = ['health']: breaks guard rule \"verify runs the runbook's suites\" (RUNBOOK.md:204-242): must include health, functional, performance, monitoring (missing functional, performance, monitoring)"),
    ("migrate_suites", {"stages": {"migrate": {"suites": ["health"]}}}, "stages.migrate.suites = ['health']: breaks guard rule \"migrate runs the runbook's suites\" (RUNBOOK.md:187-191): must include migration, health (missing migration)"),
    ("restore_unchecked", {"stages": {"restore": {"action": "none", "suites": []}}}, "stages.restore.action = 'none': breaks guard rule 'restore is a restore'"),
    ("backup_age", {"preflight": {"backup_max_age": "7d"}}, "preflight.backup_max_age = '168h': breaks guard rule 'prod deploys after a fresh backup'"),
    # Issue 15: a rule on a traffic-counted signal with min_samples 0 passes a window without a single request.
    ("min_samples_zero", {"rollback_triggers": {"error_rate": {"min_samples": 0}}},
     "rollback_triggers.error_rate.min_samples = 0: breaks guard rule 'rollback_triggers.service.error_rate is judged "
     "on traffic' (RUNBOOK.md:124-149): >= 1 (requests; a window without any must not read as healthy)"),
    # The same for a custom signal the policy declares (a ratio of its own counts).
    ("custom_min_samples_zero", {
        "metrics": {"signals": {"custom.search_errors": {"source": "service", "unit": "rate", "metric": "SearchErrors",
                                                         "denominator": ["Searches"], "samples_noun": "searches"}}},
        "rollback_triggers": {"search_errors": {"signal": "custom.search_errors", "op": "<", "threshold": "2%",
                                                "window": "5m", "min_samples": 0}}},
     "rollback_triggers.search_errors.min_samples = 0: breaks guard rule 'rollback_triggers.custom.search_errors is "
     "judged on traffic' (RUNBOOK.md:124-149): >= 1 (searches; a window without any must not read as healthy)"),
]


@pytest.mark.parametrize(("override", "expected"), [(o, e) for _, o, e in LOOSENED], ids=[n for n, _, _ in LOOSENED])
def test_policy_check_refuses_each_way_prod_can_loosen(pdir: Path, override: dict[str, Any], expected: str,  # noqa: F811
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    edit(pdir / "prod.yaml", override)
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    # Named: the file that sets the key (prod.yaml, or defaults.yaml for the lease prod inherits).
    assert f"error: {pdir / 'prod.yaml'}: {expected}" in err or f"error: {pdir / 'defaults.yaml'}: {expected}" in err, err
    # What prod inherits, sandbox inherits too; it is not guarded (the models still hold for it).
    assert "sandbox.yaml" not in err


# Refused by the models for every env (a NaN never fails a comparison, `.nan` never ends a bake), and
# values `policy check` passed before but that failed only once the lock was taken.
EVERY_ENV: list[tuple[str, str, str]] = [
    ("approval_home", "approval:\n  required: false\n  env_vars: [HOME]\n", "approval.env_vars = ['HOME']: 'HOME' is set in every shell or CI job"),
    ("approval_actor", "approval:\n  env_vars: [GITHUB_ACTOR]\n", "approval.env_vars = ['GITHUB_ACTOR']: 'GITHUB_ACTOR' is set in every shell or CI job"),
    ("lease_zero", "ledger:\n  lease: 0s\n", "ledger.lease = '0s': 0s is outside the allowed range: more than 0s .. 24h"),
    ("threshold_nan", "performance:\n  api_p95: .nan\n", "performance.api_p95 = nan: nan is not a finite threshold"),
    ("delta_inf", "compare:\n  min_p95_delta: .inf\n", "compare.min_p95_delta = inf: inf is not a finite threshold"),
    ("trigger_nan", "rollback_triggers:\n  lambda_error_rate:\n    threshold: .nan\n", "rollback_triggers.lambda_error_rate.threshold = nan:"),
    ("bake_nan", "stages:\n  deploy: {action: deploy, weight: 100%}\n  verify: {action: none, bake: .nan}\n", "stages.verify.bake = nan: nan is not a finite duration"),
    # YAML 1.1 reads `1e308` (no dot) as a string, `1.0e+308` as a float: both refused.
    ("deploy_timeout", "deploy:\n  argv: [x]\n  timeout: 1e308\n", "deploy.timeout = '1e308': '1e308' is not a duration"),
    ("deploy_timeout_float", "deploy:\n  argv: [x]\n  timeout: 1.0e+308\n", "deploy.timeout = 1e+308: 1e+308 is longer than 720h"),
    ("deploy_timeout_long", "deploy:\n  argv: [x]\n  timeout: 7h\n", "deploy.timeout = '7h': 7h is outside the allowed range: more than 0s .. 6h"),
    ("argv_placeholder", "deploy:\n  argv: [./deploy.sh, '{releas}']\n", "deploy.argv = ['./deploy.sh', '{releas}']: '{releas}': unknown placeholder {releas}; allowed: {env}, {release}"),
    ("argv_brace", "deploy:\n  argv: [./deploy.sh, '{release']\n", "deploy.argv = ['./deploy.sh', '{release']: '{release': expected '}' before end of string"),
    ("argv_conversion", "deploy:\n  argv: ['{release!r}']\n", "deploy.argv = ['{release!r}']: '{release!r}': unknown placeholder {release!r}; allowed: {env}, {release}"),
    ("interval_zero", "watch:\n  interval: 0s\n", "watch.interval = '0s': 0s is outside the allowed range: 1s .. 5m"),
    ("probe_rate_huge", "watch:\n  probe_rate: 1e6\n", "watch.probe_rate = '1e6': 1e+06 is outside the allowed range: 0 .. 50"),
    ("probe_rate_nan", "watch:\n  probe_rate: .nan\n", "watch.probe_rate = nan: nan is not a finite number"),
    ("provider_limit_huge", "watch:\n  provider_error_limit: 1e308\n", "watch.provider_error_limit = '1e308': 1e+308 is outside the allowed range: 1 .. 100"),
    ("min_samples_huge", "compare:\n  min_samples: 10000000000\n", "compare.min_samples = 10000000000: 1e+10 is outside the allowed range: 1 .. 100000"),
    ("users_inf", "performance:\n  users: .inf\n", "performance.users = inf: inf is not a finite number"),
    ("window_zero", "key_metrics:\n  lambda_error_rate:\n    window: 0s\n", "key_metrics.lambda_error_rate.window = '0s': 0s is outside the allowed range: 1s .. 24h"),
    # Issue 15: more datapoints than the window holds would read "no data" forever (named at its key, with the fix).
    ("min_samples_over_window", "key_metrics:\n  dynamodb_throttles:\n    min_samples: 1000000\n",
     "key_metrics.dynamodb_throttles.min_samples = 1000000: 1000000 datapoints cannot fit its window of 300s at 60s "
     "per datapoint: set min_samples to at most 5, or lengthen the window"),
]


@pytest.mark.parametrize(("override", "expected"), [(o, e) for _, o, e in EVERY_ENV], ids=[n for n, _, _ in EVERY_ENV])
def test_models_refuse_non_finite_and_absurd_numbers_in_every_env(pdir: Path, override: str, expected: str,  # noqa: F811
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    text = (pdir / "staging.yaml").read_text()
    for key in ("approval:", "deploy:", "stages:"):  # replaced whole, never twice in one file
        if override.startswith(key):
            start = text.index(key)
            end = next((i for i in range(start + len(key), len(text)) if text[i - 1] == "\n" and text[i].isalpha()), len(text))
            text = text[:start] + text[end:]
    (pdir / "staging.yaml").write_text(text + "\n" + override)
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    assert f"error: {pdir / 'staging.yaml'}: {expected}" in err, err


def test_non_finite_numbers_in_a_policy_built_in_code_are_violations() -> None:
    prod = load_policy(REPO / "policies", "prod").policy
    perf = prod.performance.model_copy(update={"api_p95": math.nan})
    stages = {**prod.stages, "shift10": prod.stages["shift10"].model_copy(update={"bake": math.inf})}
    violations = [(v.key, v.allowed) for v in check_guard(prod.model_copy(update={"performance": perf, "stages": stages}))]
    assert ("performance.api_p95", "a finite number") in violations and ("performance.api_p95", "<= 200") in violations
    assert ("stages.shift10.bake", "a finite number") in violations


def test_an_env_that_extends_prod_is_guarded_like_prod(pdir: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    # Before: only the name counted, so prod-eu (prod's functions, its own lock and history) passed with these.
    eu = pdir / "prod-eu.yaml"
    loose = "extends: prod\nstages:\n  deploy: {weight: 100%}\nledger:\n  backend: file\n"
    eu.write_text(loose)
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    assert f"error: {eu}: stages.deploy.weight = 1.0: breaks guard rule 'deploy moves at most 0%'" in err
    assert f"error: {eu}: ledger.backend = 'file': breaks guard rule" in err and "sandbox" not in err
    assert guard_problems(load_policy(pdir, "prod-eu"))  # what pytest refuses with exit 4 (plugin._gate_setup)
    # Said in review, in the env's own file: not production (a test env pointed elsewhere).
    eu.write_text(loose + "guarded: false\n")
    assert cli(["policy", "check", str(pdir)]) == 0
    # prod cannot say it: every env extending prod would inherit it.
    edit(pdir / "prod.yaml", {"guarded": False})
    eu.write_text(loose)
    assert cli(["policy", "check", str(pdir)]) == 1
    err = capsys.readouterr().err
    assert f"error: {pdir / 'prod.yaml'}: guarded = False: breaks guard rule \"prod's guard cannot be switched off\"" in err
    assert f"error: {eu}: stages.deploy.weight = 1.0" in err  # and prod-eu is still guarded


def test_violation_names_the_file_that_sets_the_key(pdir: Path) -> None:  # noqa: F811
    edit(pdir / "defaults.yaml", {"watch": {"probe_rate": 0}})
    edit(pdir / "prod.yaml", {"stages": {"shift50": {"weight": "60%"}}})
    problems = guard_problems(load_policy(pdir, "prod"))
    assert f"{pdir / 'defaults.yaml'}: watch.probe_rate = 0.0" in "\n".join(problems)
    assert f"{pdir / 'prod.yaml'}: stages.shift50.weight = 0.6" in "\n".join(problems)


def test_guard_numbers_cite_the_runbook() -> None:
    source = Path(guard.__file__).read_text()
    assert source.count("RUNBOOK.md:") >= 25
    runbook = REPO.parent / "shared" / "RUNBOOK.md"  # shared/ beside the checkout, in CI too
    if not runbook.is_file():
        pytest.skip(f"{runbook} is not beside this checkout")
    lines = runbook.read_text().splitlines()
    said = {"deploy": "Deploy Blue Environment", "shift10": "Shift 10% Traffic", "shift50": "Shift 50% Traffic",
            "shift100": "Shift 100% Traffic", "rollback": "Manual Rollback", "preflight": "Pre-Deployment Checklist",
            "verify": "Post-Deployment Verification", "backup": "Create backup first", "migrate": "Verify migration",
            "restore": "Restore from most recent backup"}
    for name, floor in guard.STAGES.items():
        first = int(floor.source.removeprefix("RUNBOOK.md:").split("-")[0].split(",")[0])
        assert said[name] in lines[first - 1], (name, floor.source, lines[first - 1])
    assert "Monitor for 5 minutes" in lines[106] and "Monitor for 10 minutes" in lines[117] and "24 hours" in lines[119]
    assert "should be <1%" in lines[125] and "Lambda error rate >5%" in lines[145] and "<200ms" in lines[231]


# ---------------------------------------------------------------- pytest runs the guard

def _prod_project(pytester: pytest.Pytester, override: Mapping[str, Any]) -> None:
    pol = pytester.path / "policies"
    pol.mkdir()
    for name in ("defaults.yaml", "prod.yaml"):
        shutil.copy(REPO / "policies" / name, pol / name)
    publish = [sys.executable, str(REPO / "tests/support/publish_versions.py"), "{release}", "onchain-api,onchain-ws"]
    edit(pol / "prod.yaml", {"deploy": {"argv": publish, "timeout": "60s"}, **override})


def _versions(url: str) -> dict[str, list[str]]:
    client = lambda_client(url)
    return {fn: [v["Version"] for v in client.list_versions_by_function(FunctionName=fn)["Versions"]] for fn in FUNCTIONS}


@pytest.mark.parametrize("stage", ["deploy", "shift10", "rollback"])
def test_pytest_refuses_every_stage_of_a_loosened_prod_and_changes_nothing(
        pytester: pytest.Pytester, aws: str, stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    _prod_project(pytester, {"stages": {"shift10": {"action": "promote", "weight": None}}, "watch": {"probe_rate": 0},
                             "ledger": {"backend": "file"}})
    before = (alias_state(aws), _versions(aws))
    r = run_forked(pytester, "-p", "no:cacheprovider", "--env=prod", f"--stage={stage}", "--release=v2",
                                      "--approved-by=alice", timeout=60)
    assert r.ret == 4
    prod = pytester.path / "policies" / "prod.yaml"
    r.stderr.fnmatch_lines([
        "*the prod policy is looser than the runbook; nothing was changed*",
        f"*{prod}: stages.shift10.action = 'promote': breaks guard rule 'shift10 is a shift'*",
        f"*{prod}: watch.probe_rate = 0.0: breaks guard rule*",
        f"*{prod}: ledger.backend = 'file': breaks guard rule*",
    ])
    # Nothing ran: no deploy command (no new version), no alias move, no ledger anywhere.
    assert (alias_state(aws), _versions(aws)) == before
    assert boto3.client("dynamodb", region_name="us-east-1", endpoint_url=aws).list_tables()["TableNames"] == []
    assert not (pytester.path / ".llamadeploy").exists()


def test_pytest_plan_runs_on_the_shipped_prod(pytester: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    _prod_project(pytester, {})
    r = run_forked(pytester, "-p", "no:cacheprovider", "--env=prod", "--stage=deploy", "--release=v2",
                                      "--approved-by=alice", "--plan", timeout=60)
    out = r.stdout.str()
    assert "llamadeploy plan: deploy of release v2 in prod" in out and "looser than the runbook" not in r.stderr.str()
