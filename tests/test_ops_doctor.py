"""llamadeploy doctor against a moto server, a real PostgreSQL and a real Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import botocore.client
import pytest

from pytest_llamadeploy.ops.doctor import run_doctor
from pytest_llamadeploy.ops.proven import check_names, check_series
from pytest_llamadeploy.policy import load_policy
from pytest_llamadeploy.targets import ResolvedTargets
from tests.support.aws_names import provision_names, publish_series
from tests.support.botocalls import allowed_actions, install, not_allowed, recorded
from tests.test_ops_support import (  # noqa: F401
    REPO,
    ROLLBACK_FAILED_MARKER,
    create_functions,
    free_port,
    ops_aws,
    ops_dsn,
    ops_moto_url,
    ops_pg,
    wait_for,
)

TEMPLATE = {"Resources": {"Api": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": "onchain-api-topic"}}}}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if not binary:
        pytest.skip("redis-server not installed (apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    try:
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 10, "redis")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def service(ops_aws):  # noqa: F811
    """The stack, the functions and alias `live` as a deployment leaves them."""
    cfn = ops_aws.client("cloudformation")
    cfn.create_stack(StackName="onchain-services", TemplateBody=json.dumps(TEMPLATE))
    create_functions(ops_aws, {"DATABASE_URL": "x", "REDIS_URL": "y"})
    return ops_aws


def _policy():
    return load_policy(REPO / "policies", "staging").policy


def _targets(dsn: str, redis_url: str) -> ResolvedTargets:
    return ResolvedTargets("", "", dsn, redis_url, "", "env")


def test_doctor_all_ok(service, ops_dsn, redis_url):  # noqa: F811
    policy = _named(service)
    publish_series(service, policy)
    findings = run_doctor(policy, service, _targets(ops_dsn, redis_url))
    assert [(f.name, f.ok) for f in findings] == [
        ("credentials", True), ("cloudformation_stack", True), ("lambda_env_vars", True),
        ("aws_names", True), ("metric_series", True),
        ("postgres", True), ("redis", True)], [f.detail for f in findings if not f.ok]
    assert "stack onchain-services is CREATE_COMPLETE" == findings[1].detail


def test_doctor_reports_update_rollback_failed_with_the_runbook_resolution(service, ops_dsn, redis_url):  # noqa: F811
    template = dict(TEMPLATE, Description=ROLLBACK_FAILED_MARKER)
    service.client("cloudformation").update_stack(StackName="onchain-services", TemplateBody=json.dumps(template))

    stack = next(f for f in run_doctor(_policy(), service, _targets(ops_dsn, redis_url))
                 if f.name == "cloudformation_stack")

    assert not stack.ok
    assert stack.detail.startswith("stack onchain-services is UPDATE_ROLLBACK_FAILED")
    assert "UPDATE_FAILED: Resource handler returned message: limit exceeded" in stack.detail
    assert stack.resolution[0] == "Check AWS credentials: `aws sts get-caller-identity`"
    assert "Check CloudFormation events for error details" in stack.resolution
    assert any("continue-update-rollback --stack-name onchain-services" in s for s in stack.resolution)


def test_doctor_reports_missing_env_vars_and_dead_connections(service, ops_pg):  # noqa: F811
    lam = service.client("lambda")
    lam.update_function_configuration(FunctionName="onchain-ws", Environment={"Variables": {"DATABASE_URL": "x"}})
    version = lam.publish_version(FunctionName="onchain-ws")["Version"]
    lam.update_alias(FunctionName="onchain-ws", Name="live", FunctionVersion=version)
    dead = f"redis://127.0.0.1:{free_port()}/0"

    findings = {f.name: f for f in run_doctor(_policy(), service,
                                               _targets(f"{ops_pg}/no_such_db?password=hunter22", dead))}

    env = findings["lambda_env_vars"]
    assert not env.ok and f"onchain-ws version {version} (alias live) lacks REDIS_URL" in env.detail
    assert "Verify environment variables in Lambda console" in env.resolution
    assert not findings["postgres"].ok and "Test database connection" in findings["postgres"].resolution
    assert "hunter22" not in findings["postgres"].detail
    assert not findings["redis"].ok and "Test Redis connection" in findings["redis"].resolution


def test_doctor_cli_exit_codes(tmp_path: Path):
    from pytest_llamadeploy.cli import main

    assert main(["doctor", "--env", "nope", "--policy-dir", str(REPO / "policies")]) == 2


# ---------------------------------------------------------------- issue 13: every name and series proven to exist

def _named(aws, skip=(), **overrides):  # noqa: ANN001, ANN202
    """The staging policy with the WebSocket API id moto generated (and any override of resources:)."""
    policy = _policy()
    ws_id = provision_names(aws, policy, skip=skip)
    resources = policy.resources.model_copy(update={"ws_api_id": ws_id, **overrides})
    return policy.model_copy(update={"resources": resources})


def test_doctor_proves_every_name_and_series(service):  # noqa: F811
    policy = _named(service)
    published = publish_series(service, policy)
    names, series = check_names(service, policy), check_series(service, policy)
    assert names.ok, names.detail
    assert series.ok, series.detail
    assert f"{published} series of" in series.detail and published >= 20


def test_doctor_names_each_missing_resource_and_series(service, tmp_path, monkeypatch):  # noqa: F811
    policy = _named(service, skip=("cache_group", "table:onchain-alerts"))
    publish_series(service, policy, skip_signals=("cache.hit_rate",))
    monkeypatch.setattr(botocore.client.BaseClient, "__init__", botocore.client.BaseClient.__init__)  # undone after
    monkeypatch.setattr(botocore.client.BaseClient, "_llama_recording", None, raising=False)
    install(tmp_path / "calls.jsonl", stage="doctor")
    findings = {f.name: f for f in run_doctor(policy, service, _targets("", ""))}
    # Every call doctor made is allowed by docs/iam-policy.json's Doctor statement (issue 13 part 7).
    document = json.loads((REPO / "docs" / "iam-policy.json").read_text())
    calls = [c["action"] for c in recorded(tmp_path / "calls.jsonl")]
    assert len(set(calls)) >= 10 and not_allowed(calls, allowed_actions(document, {"Doctor"})) == []
    names, series = findings["aws_names"], findings["metric_series"]
    assert not names.ok
    assert "resources.cache_group: ElastiCache replication group 'onchain-redis' not found" in names.detail
    assert "resources.dynamodb_tables: DynamoDB table 'onchain-alerts' not found" in names.detail
    assert "rest_api" not in names.detail and "sns_topic" not in names.detail
    assert not series.ok
    assert ("key_metrics.cache_hit_rate needs AWS/ElastiCache CacheHits {CacheClusterId=onchain-redis-001}"
            in series.detail)
    assert "dynamodb" not in series.detail  # its throttle series were published: the no_data: pass rule is proven


def test_no_data_pass_without_its_series_is_refused(service):  # noqa: F811
    policy = _named(service)
    publish_series(service, policy, skip_signals=("dynamodb.throttles",))
    series = check_series(service, policy)
    assert not series.ok
    assert series.detail.startswith(
        "key_metrics.dynamodb_throttles has no_data: pass but CloudWatch lists none of "
        "AWS/DynamoDB ReadThrottleEvents {TableName=onchain-alerts}; "
        "AWS/DynamoDB WriteThrottleEvents {TableName=onchain-alerts} (ListMetrics)"), series.detail
    assert "set no_data: wait (or fail)" in series.detail


def test_a_missing_resource_is_told_from_a_failing_call():
    # Each service says "not found" its own way; any other error (AccessDenied) is no verdict on the name.
    from botocore.exceptions import ClientError

    from pytest_llamadeploy.ops.proven import _not_found

    def error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "x"}}, "Op")

    assert all(_not_found(error(c)) for c in (
        "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", "ResourceNotFoundException",
        "NotFoundException", "ReplicationGroupNotFoundFault", "ValidationError"))
    assert not any(_not_found(error(c)) for c in ("AccessDeniedException", "ThrottlingException"))
