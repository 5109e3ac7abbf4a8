"""preflight: the runbook's checklist fails for each missing item and passes when all hold."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from pytest_llamadeploy.ops.checklist import (
    CHECKS,
    TOPIC,
    count_subscriptions,
    in_window,
    parse_window,
    run_preflight,
)
from pytest_llamadeploy.ops.results import OpsError
from pytest_llamadeploy.sandbox.provision import subscribe_stakeholders
from tests.support.aws_names import names_yaml, provision_names, publish_series
from tests.test_ops_support import (  # noqa: F401
    create_functions,
    free_port,
    make_ctx,
    new_ledger,
    ops_aws,
    ops_moto_url,
)

NOON = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)  # a Tuesday


@pytest.fixture
def ready(tmp_path, ops_aws, monkeypatch):  # noqa: F811
    """Everything the checklist wants, on a prod-like policy with approval and a window."""
    monkeypatch.setenv("LLAMADEPLOY_TESTS_PASSED", "true")
    monkeypatch.chdir(tmp_path)  # database.migrations_dir is relative to the working directory
    (tmp_path / "sql" / "migrations").mkdir(parents=True)
    (tmp_path / "sql/migrations/0001_a.sql").write_text("CREATE TABLE a (id int);\n")
    (tmp_path / "sql/migrations/0001_a.rollback.sql").write_text("DROP TABLE a;\n")
    versions = create_functions(ops_aws, {"DATABASE_URL": "x", "REDIS_URL": "y"})
    subscribe_stakeholders(ops_aws)  # someone confirmed on the topic the notice goes to
    ledger = new_ledger(tmp_path)
    ledger.put_artifact("opstest", "v1.2.3", "backup", {"id": "b1", "ok": True, "created_at": time.time() - 60})

    ws_api_id = ""

    def build(extra: str = "", resources: str = "", **kw):
        policy = "approval:\n  required: true\npreflight:\n  window: \"09:00-17:00\"\n  window_days: [1, 2, 3, 4]\n"
        policy += (names_yaml(ws_api_id) + resources) if ws_api_id else ""
        kw.setdefault("approver", "alice")
        return make_ctx(tmp_path, ops_aws, extends="prod", extra=policy + extra, new_versions=versions, **kw)

    # The account the policy names, every series its rules read published (the items aws_names_exist,
    # metric_series_exist); a test that wants one missing deletes it.
    ws_api_id = provision_names(ops_aws, build().policy)
    publish_series(ops_aws, build().policy)
    return build, ledger


def _by_name(results):
    return {r.name: r for r in results}


def test_all_items_hold(ready, ops_aws):  # noqa: F811
    build, ledger = ready
    results = run_preflight(build(), ledger, emergency_reason=None, now=lambda: NOON)
    assert [r.name for r in results] == list(CHECKS)
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    notified = _by_name(results)["stakeholders_notified"].reason
    assert "llamadeploy-deployments" in notified and "MessageId" in notified
    assert "(1 confirmed subscription(s))" in notified
    recorded = ledger.get_artifacts("opstest", "preflight")[0]
    assert recorded["ok"] and len(recorded["checks"]) == len(CHECKS)


def _no_ci(monkeypatch, tmp_path, ops_aws):  # noqa: F811
    monkeypatch.delenv("LLAMADEPLOY_TESTS_PASSED")


def _ci_failed(monkeypatch, tmp_path, ops_aws):  # noqa: F811
    monkeypatch.setenv("LLAMADEPLOY_TESTS_PASSED", "false")


def _no_rollback(monkeypatch, tmp_path, ops_aws):  # noqa: F811
    (tmp_path / "sql/migrations/0002_b.sql").write_text("CREATE TABLE b (id int);\n")


def _bad_sql(monkeypatch, tmp_path, ops_aws):  # noqa: F811
    (tmp_path / "sql/migrations/0002_b.sql").write_text("CREATE TABLE b (id int);\n")
    (tmp_path / "sql/migrations/0002_b.rollback.sql").write_text("-- nothing here\n")


def _env_var_missing(monkeypatch, tmp_path, ops_aws):  # noqa: F811
    lam = ops_aws.client("lambda")
    lam.update_function_configuration(FunctionName="onchain-ws", Environment={"Variables": {"DATABASE_URL": "x"}})
    lam.publish_version(FunctionName="onchain-ws")


CASES = {
    "tests_passing": (_no_ci, "set LLAMADEPLOY_TESTS_PASSED=true"),
    "tests_failed": (_ci_failed, "CI reports the tests did not pass"),
    "migrations_prepared": (_no_rollback, "0002_b.sql: no rollback file; write 0002_b.rollback.sql"),
    "migrations_parse": (_bad_sql, "0002_b.rollback.sql: no SQL statement in the file"),
    "env_vars_updated": (_env_var_missing, "onchain-ws version 2 lacks REDIS_URL"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_missing_item_fails_with_its_reason(case, ready, ops_aws, tmp_path, monkeypatch):  # noqa: F811
    build, ledger = ready
    mutate, reason = CASES[case]
    mutate(monkeypatch, tmp_path, ops_aws)
    ctx = build()
    if case == "env_vars_updated":
        ctx.new_versions = {}  # the latest published version is the new one
    results = run_preflight(ctx, ledger, emergency_reason=None, now=lambda: NOON)
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1, failed
    assert reason in failed[0].reason


def test_backup_missing_or_too_old(ready, tmp_path):
    build, _ = ready
    empty = new_ledger(tmp_path)
    r = _by_name(run_preflight(build(), empty, emergency_reason=None, now=lambda: NOON))["backup_created"]
    assert not r.ok and "no successful backup recorded for release v1.2.3" in r.reason
    old = new_ledger(tmp_path)
    old.put_artifact("opstest", "v1.2.3", "backup", {"id": "b0", "ok": True, "created_at": time.time() - 2 * 86400})
    r = _by_name(run_preflight(build(), old, emergency_reason=None, now=lambda: NOON))["backup_created"]
    assert not r.ok and "older than preflight.backup_max_age 24h" in r.reason
    other = new_ledger(tmp_path)
    other.put_artifact("opstest", "v0.9", "backup", {"id": "b9", "ok": True, "created_at": time.time()})
    assert not _by_name(run_preflight(build(), other, emergency_reason=None, now=lambda: NOON))["backup_created"].ok


def test_window_closed_unless_emergency_with_reason(ready):
    build, ledger = ready
    evening = datetime(2025, 3, 4, 18, 30, tzinfo=UTC)
    r = _by_name(run_preflight(build(), ledger, emergency_reason=None, now=lambda: evening))["deployment_window"]
    assert not r.ok and "outside the hours of the window 09:00-17:00" in r.reason and "--emergency" in r.reason
    friday = datetime(2025, 3, 7, 12, 0, tzinfo=UTC)
    r = _by_name(run_preflight(build(), ledger, emergency_reason=None, now=lambda: friday))["deployment_window"]
    assert not r.ok and "weekday 5 not in [1, 2, 3, 4]" in r.reason
    results = run_preflight(build(), ledger, emergency_reason="data loss in prod, INC-42", now=lambda: evening)
    r = _by_name(results)["deployment_window"]
    assert r.ok and "EMERGENCY" in r.reason and "INC-42" in r.reason
    assert ledger.get_artifacts("opstest", "preflight")[0]["emergency_reason"] == "data loss in prod, INC-42"
    with pytest.raises(OpsError, match="--emergency needs --reason"):
        run_preflight(build(), ledger, emergency_reason="  ", now=lambda: evening)


def test_approval_and_notification_failures(ready, tmp_path):
    build, ledger = ready
    r = _by_name(run_preflight(build(approver=None), ledger, emergency_reason=None, now=lambda: NOON))
    assert not r["approval_recorded"].ok and "LLAMADEPLOY_APPROVED_BY" in r["approval_recorded"].reason
    # SNS unreachable: the item fails with the provider's error, the rest still report.
    ctx = build()
    ctx.aws = dict(ctx.aws, endpoint_url=f"http://127.0.0.1:{free_port()}")
    r = _by_name(run_preflight(ctx, ledger, emergency_reason=None, now=lambda: NOON))
    assert not r["stakeholders_notified"].ok and r["stakeholders_notified"].reason.startswith("could not check")
    assert r["tests_passing"].ok


def test_non_production_skips_production_items(tmp_path, ops_aws, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sql" / "migrations").mkdir(parents=True)
    create_functions(ops_aws, {"DATABASE_URL": "x", "REDIS_URL": "y"})
    monkeypatch.setenv("LLAMADEPLOY_TESTS_PASSED", "1")
    ctx = make_ctx(tmp_path, ops_aws, extends="staging", extra="preflight:\n  prove_names: false\n")
    results = _by_name(run_preflight(ctx, new_ledger(tmp_path), emergency_reason=None))
    assert all(r.ok for r in results.values()), results
    assert results["aws_names_exist"].reason.startswith("not checked: preflight.prove_names is false")
    for name in ("backup_created", "deployment_window", "stakeholders_notified"):
        assert "production only" in results[name].reason


def test_window_parsing():
    assert parse_window("") is None and parse_window("09:00-17:00") == (540, 1020)
    with pytest.raises(OpsError, match="preflight.window = '9-5'"):
        parse_window("9-5")
    assert in_window("22:00-02:00", [1, 2, 3, 4, 5, 6, 7], datetime(2025, 3, 4, 1, 0, tzinfo=UTC))[0]
    assert not in_window("22:00-02:00", [1, 2, 3, 4, 5, 6, 7], datetime(2025, 3, 4, 12, 0, tzinfo=UTC))[0]


def test_stakeholders_not_notified_when_nobody_confirmed_the_topic(ready, ops_aws):  # noqa: F811
    build, ledger = ready
    sns = ops_aws.client("sns")
    arn = sns.create_topic(Name=TOPIC)["TopicArn"]
    for sub in sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]:
        sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
    results = run_preflight(build(), ledger, emergency_reason=None, now=lambda: NOON)
    failed = [r for r in results if not r.ok]
    assert [r.name for r in failed] == ["stakeholders_notified"], failed
    reason = failed[0].reason
    assert f"SNS topic {arn} has no confirmed subscription (0 pending confirmation)" in reason
    assert f"aws sns subscribe --topic-arn {arn}" in reason and "confirm the subscription" in reason


def test_pending_subscriptions_do_not_count_as_notified() -> None:
    subs = [{"SubscriptionArn": "PendingConfirmation", "Protocol": "email"},
            {"SubscriptionArn": "arn:aws:sns:us-east-1:123456789012:t:1", "Protocol": "sqs"}]
    assert count_subscriptions(subs) == (1, 1)
    assert count_subscriptions(subs[:1]) == (0, 1)
    assert count_subscriptions([]) == (0, 0)


def test_preflight_names_a_missing_cache_group_and_table(ready, ops_aws):  # noqa: F811
    # Issue 13: a policy naming a cache group or table that does not exist is refused at preflight, named.
    build, ledger = ready
    ctx = build(resources="  cache_group: onchain-redsi\n  dynamodb_tables: [onchain-alerts, onchain-alert]\n")
    results = _by_name(run_preflight(ctx, ledger, emergency_reason=None, now=lambda: NOON))
    names = results["aws_names_exist"]
    assert not names.ok
    assert "resources.cache_group: ElastiCache replication group 'onchain-redsi' not found" in names.reason
    assert "resources.dynamodb_tables: DynamoDB table 'onchain-alert' not found" in names.reason
    assert "'onchain-alerts'" not in names.reason
    series = results["metric_series_exist"]
    assert not series.ok and "AWS/ElastiCache CacheHits {CacheClusterId=onchain-redsi-001}" in series.reason
    assert "no_data: pass but CloudWatch lists none of AWS/DynamoDB ReadThrottleEvents {TableName=onchain-alert}" \
        in series.reason
