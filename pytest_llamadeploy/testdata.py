"""Test data the suites write into an environment: tagged with the run id, removed afterwards, allowed by policy.

The functional and performance suites run against production too (the deploy
and promote stages). What they write is therefore:

- allowed per env by the policy (``test_data.write``, prod's is conservative);
- tagged: every chain they write for is ``llamadeploy-<run>-...``, so a row or
  key of a run can be told from users' data and from other runs';
- removed at the end of the session, whatever its outcome (a session fixture's
  finalizer), from the service's tables (docs/service-contract.md, Schema) and
  Redis keys;
- and alerts are read from a queue of the run's own, subscribed to the alert
  topic for the run and deleted afterwards: the production alerts queue is never
  received from (a receive raises real messages' receive counts toward the
  dead-letter queue and competes with the real consumer).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .policy import WRITING_SUITES

#: The Redis key of a chain's last TVL (docs/service-contract.md, "Alerts: exactly once").
LAST_TVL_KEY = "llama:last_tvl:{chain}"


def run_tag(run_id: str) -> str:
    """``llamadeploy-<run>``: the prefix of every chain a run writes for (a chain name allows [A-Za-z0-9_.-])."""
    safe = re.sub(r"[^A-Za-z0-9]", "", run_id)[:16] or uuid.uuid4().hex[:12]
    return f"llamadeploy-{safe}"


def write_refusal(policy: Any, env: str, suite: str) -> str | None:
    """Why ``suite`` may not write in ``env`` (None: it may)."""
    assert suite in WRITING_SUITES, suite
    if suite in policy.test_data.write:
        return None
    return (f"env {env}: the {suite} suite writes {WRITING_SUITES[suite]}, and the policy's test_data.write "
            f"({', '.join(policy.test_data.write) or 'nothing'}) does not allow it; add {suite} to test_data.write "
            "in the env's policy to run it")


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def count_functional_rows(dsn: str, prefix: str) -> dict[str, int]:
    """Rows of the run's chains in the service's alert tables."""
    from .ops import pg

    conn = pg.connect(dsn)
    try:
        rules = conn.execute("SELECT count(*) FROM alert_rules WHERE chain LIKE %s", (_like(prefix),)).fetchone()[0]
        alerts = conn.execute("SELECT count(*) FROM alerts WHERE rule_id IN (SELECT id FROM alert_rules WHERE chain "
                              "LIKE %s)", (_like(prefix),)).fetchone()[0]
    finally:
        conn.close()
    return {"alert_rules": int(rules), "alerts": int(alerts)}


def remove_rows(dsn: str, prefix: str) -> dict[str, int]:
    """Delete the run's alerts and alert rules (chains starting with ``prefix``); returns what was deleted."""
    from .ops import pg

    conn = pg.connect(dsn, autocommit=False)
    try:
        with conn.transaction():
            alerts = conn.execute("DELETE FROM alerts WHERE rule_id IN (SELECT id FROM alert_rules WHERE chain LIKE %s)",
                                  (_like(prefix),)).rowcount
            rules = conn.execute("DELETE FROM alert_rules WHERE chain LIKE %s", (_like(prefix),)).rowcount
    finally:
        conn.close()
    return {"alert_rules": rules, "alerts": alerts}


def remove_keys(redis_url: str, prefix: str) -> int:
    """Delete the run's Redis keys (each chain's last TVL); returns how many."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=LAST_TVL_KEY.format(chain=prefix) + "*", count=500))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


@dataclass
class AlertInbox:
    """A queue of the run's own, subscribed to the alert topic for the run (raw delivery), deleted by ``close``."""

    sqs: Any
    sns: Any
    queue_url: str
    subscription_arn: str
    topic_arn: str

    @classmethod
    def open(cls, sqs: Any, sns: Any, topic: str, tag: str) -> AlertInbox:
        topic_arn = find_topic(sns, topic)
        queue_url = sqs.create_queue(QueueName=f"{tag}-alerts-{uuid.uuid4().hex[:8]}"[:80])["QueueUrl"]
        try:
            queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            # Only this topic may send to the queue (the policy SNS needs to deliver to SQS).
            sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps({
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
                    "Resource": queue_arn, "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}}}]})})
            subscription = sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn,
                                         Attributes={"RawMessageDelivery": "true"}, ReturnSubscriptionArn=True)
        except Exception:
            sqs.delete_queue(QueueUrl=queue_url)
            raise
        return cls(sqs, sns, queue_url, str(subscription["SubscriptionArn"]), topic_arn)

    def receive(self, wait: int) -> list[dict[str, Any]]:
        """Messages of the run's queue (each deleted once read: nobody else reads this queue)."""
        batch = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                         WaitTimeSeconds=wait).get("Messages", [])
        for message in batch:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return batch

    def close(self) -> None:
        try:
            self.sns.unsubscribe(SubscriptionArn=self.subscription_arn)
        finally:
            self.sqs.delete_queue(QueueUrl=self.queue_url)


def find_topic(sns: Any, name: str) -> str:
    """The ARN of the SNS topic named ``name`` (resources.alerts_topic)."""
    kwargs: dict[str, Any] = {}
    while True:
        page = sns.list_topics(**kwargs)
        for topic in page.get("Topics", []):
            if topic["TopicArn"].rsplit(":", 1)[-1] == name:
                return str(topic["TopicArn"])
        if not page.get("NextToken"):
            raise LookupError(f"SNS topic {name!r} (policy resources.alerts_topic) not found; the service publishes "
                              "its alerts there (docs/service-contract.md)")
        kwargs["NextToken"] = page["NextToken"]
