"""What ``sandbox up`` creates in moto: the production account's resources, by their real names.

Lambda functions with the alias ``live`` (the alias is created after the
baseline release is published, see ``cli``), the alerts queue and table, the
RDS instance (so backup/snapshot stages have something to snapshot), the
CloudFormation stack and the log groups. ``NAMES`` are this rehearsal
account's resource names: ``policies/sandbox.yaml``'s ``resources:`` section
names the same, and the gate finds them as it would on AWS.
"""

from __future__ import annotations

import importlib.util
import io
import json
import zipfile
from typing import Any

from ..aws import AwsConfig
from .state import SANDBOX_CREDENTIALS, SandboxState

FUNCTIONS = ("onchain-api", "onchain-ws")
ALIAS = "live"
#: The alias the preview stage calls (the release under test at 0 %).
PREVIEW_ALIAS = "preview"
#: The sandbox account's resource names (policies/sandbox.yaml, ``resources:``, names the same).
NAMES = {
    "rest_api": "onchain-api", "rest_stage": "live", "preview_stage": "preview",
    "ws_api": "onchain-ws", "ws_stage": "live", "cache_group": "onchain-redis",
    "dynamodb_table": "onchain-alerts", "alerts_queue": "onchain-alerts", "rds_instance": "defillama",
    "stack": "onchain-services", "sns_topic": "onchain-deployments", "alerts_topic": "onchain-alerts",
}
BASELINE_RELEASE = "v0"
RUNTIME = "python3.11"
ROLE_NAME = "onchain-lambda-role"

_HANDLER = (
    "# The sandbox never runs this: the front door routes to the release's service process.\n"
    "def handler(event, context):\n"
    "    return {'statusCode': 200, 'body': 'sandbox'}\n"
)

_STACK_TEMPLATE = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Description": "onchain-services (llamadeploy sandbox)",
    "Resources": {
        "ReleaseParameter": {
            "Type": "AWS::SSM::Parameter",
            "Properties": {"Name": "/onchain-services/stack", "Type": "String", "Value": "sandbox"},
        }
    },
}

_ASSUME_ROLE = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def sandbox_aws(state: SandboxState) -> AwsConfig:
    """boto3 configuration for this sandbox's moto (few retries: moto answers what it lacks with 500)."""
    return AwsConfig(region=state.region, endpoint_url=state.aws_endpoint, max_attempts=2,
                     credentials=dict(SANDBOX_CREDENTIALS), connect_timeout=3.0, read_timeout=30.0)


class _Clients:
    """boto3 clients from one session: a session per client reloads botocore's models (~0.1-0.3 s each)."""

    def __init__(self, aws: AwsConfig):
        from botocore.config import Config

        self._aws = aws
        self._session = aws.session()
        self._config = Config(retries={"max_attempts": aws.max_attempts, "mode": "standard"},
                              connect_timeout=aws.connect_timeout, read_timeout=aws.read_timeout)

    def client(self, service: str) -> Any:
        return self._session.client(service, endpoint_url=self._aws.endpoint_url, config=self._config)


def handler_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("handler.py", _HANDLER)
    return buffer.getvalue()


def provision(aws: AwsConfig, state: SandboxState) -> dict[str, Any]:
    """Create the sandbox's AWS resources in moto; return what the state should remember (queue URL...)."""
    clients = _Clients(aws)
    iam = clients.client("iam")
    role_arn = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(_ASSUME_ROLE))["Role"]["Arn"]

    lam = clients.client("lambda")
    code = handler_zip()
    logs = clients.client("logs")
    for function in FUNCTIONS:
        lam.create_function(
            FunctionName=function, Runtime=RUNTIME, Role=role_arn, Handler="handler.handler",
            Code={"ZipFile": code}, Description=f"{function} (llamadeploy sandbox)", Timeout=30, MemorySize=256,
            Publish=False,
        )
        logs.create_log_group(logGroupName=f"/aws/lambda/{function}")

    queue_url = clients.client("sqs").create_queue(QueueName=NAMES["alerts_queue"])["QueueUrl"]
    topic_arn = subscribe_queue_to_topic(clients, NAMES["alerts_topic"], queue_url)
    subscribe_stakeholders(clients)

    clients.client("dynamodb").create_table(
        TableName=NAMES["dynamodb_table"],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    # No master password: moto does not need one and the sandbox's database uses trust auth.
    clients.client("rds").create_db_instance(
        DBInstanceIdentifier=NAMES["rds_instance"], DBInstanceClass="db.t3.micro", Engine="postgres",
        AllocatedStorage=20, DBName="defillama", MasterUsername="postgres", BackupRetentionPeriod=7,
    )

    clients.client("cloudformation").create_stack(StackName=NAMES["stack"],
                                              TemplateBody=json.dumps(_STACK_TEMPLATE))
    return {"sqs_queue_url": queue_url, "role_arn": role_arn, "alerts_topic_arn": topic_arn}


#: The alerts queue's subscription filter: the gate's test alerts (chains tagged ``llamadeploy-<run>``,
#: pytest_llamadeploy/testdata.py) never reach the real consumer (README, "Use it on your AWS account").
ALERTS_FILTER_POLICY = {"chain": [{"anything-but": {"prefix": "llamadeploy-"}}]}


def subscribe_queue_to_topic(aws: Any, topic: str, queue_url: str) -> str:
    """The alerts topic with the alerts queue subscribed (raw delivery: the body stays the alert JSON),
    test alerts filtered out."""
    sns, sqs = aws.client("sns"), aws.client("sqs")
    topic_arn = str(sns.create_topic(Name=topic)["TopicArn"])
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"RawMessageDelivery": "true", "FilterPolicy": json.dumps(ALERTS_FILTER_POLICY)})
    return topic_arn


#: The stakeholders' inbox in the sandbox: a queue subscribed to the preflight's deployment topic.
STAKEHOLDERS_QUEUE = "llamadeploy-stakeholders"


def subscribe_stakeholders(aws: Any) -> str:
    """A confirmed subscriber on the preflight's topic (its check refuses a topic nobody confirmed).

    An SQS subscription in the topic's own account is confirmed at once, on AWS as in moto.
    """
    from ..ops.checklist import TOPIC

    sns, sqs = aws.client("sns"), aws.client("sqs")
    topic_arn = sns.create_topic(Name=TOPIC)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=STAKEHOLDERS_QUEUE)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return str(sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)["SubscriptionArn"])


def fail_stack_update(aws: AwsConfig) -> None:
    """Leave the stack in UPDATE_ROLLBACK_FAILED, as a failed deployment whose rollback failed does (for doctor)."""
    from .moto_ext import STACK_ROLLBACK_FAILED_MARKER

    template = dict(_STACK_TEMPLATE, Description=f"{_STACK_TEMPLATE['Description']} {STACK_ROLLBACK_FAILED_MARKER}")
    aws.client("cloudformation").update_stack(StackName=NAMES["stack"], TemplateBody=json.dumps(template))


def repair_stack(aws: AwsConfig) -> str:
    """A good update of the stack (UPDATE_COMPLETE): what a fixed deployment leaves. Returns the status."""
    cfn = aws.client("cloudformation")
    cfn.update_stack(StackName=NAMES["stack"], TemplateBody=json.dumps(_STACK_TEMPLATE))
    return str(cfn.describe_stacks(StackName=NAMES["stack"])["Stacks"][0]["StackStatus"])


def create_alias(aws: AwsConfig, versions: dict[str, str]) -> None:
    """Point ``live`` (users) and ``preview`` (the preview stage) at the baseline's version of each function."""
    lam = aws.client("lambda")
    for function, version in versions.items():
        for alias, description in ((ALIAS, "production traffic"), (PREVIEW_ALIAS, "the release under test at 0%")):
            lam.create_alias(FunctionName=function, Name=alias, FunctionVersion=str(version), Description=description)


def provision_observability(aws: AwsConfig, state: SandboxState) -> bool:
    """Alarms and dashboards, when the metrics work's module is there. Returns whether it ran."""
    if importlib.util.find_spec("pytest_llamadeploy.sandbox.observability") is None:
        return False
    from . import observability  # type: ignore[attr-defined,unused-ignore]

    observability.provision(aws, state)
    return True


def alias_state(aws: AwsConfig, alias: str = ALIAS) -> dict[str, Any]:
    """Per function: the alias's main version and its additional version weights."""
    lam = aws.client("lambda")
    result: dict[str, Any] = {}
    for function in FUNCTIONS:
        found = lam.get_alias(FunctionName=function, Name=alias)
        weights = (found.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        result[function] = {"version": found["FunctionVersion"], "weights": {k: float(v) for k, v in weights.items()}}
    return result
