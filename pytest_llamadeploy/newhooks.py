"""Hook specifications: how a team plugs in another traffic driver, ledger, metric provider or notifier without forking.

Implement a hook in a ``conftest.py`` at the repository root (next to ``suites/``)
or in an installed plugin (a ``pytest11`` entry point). Arguments are passed by
keyword; a hook may take fewer of them than the spec lists. For the two
factories the first non-None result wins and ``None`` keeps the default; the
notify hook is called on every implementation. All of them run on the
controller only (never on an xdist worker), once per stage session.

Example, ``conftest.py`` of a repository set up with ``llamadeploy init``::

    import json, urllib.request

    def pytest_llamadeploy_notify(event, record):
        if event in ("rollback", "fail") and record["env"] == "prod":
            body = json.dumps({"summary": f"{record['stage']} of {record['release']}: {record['reason']}"})
            urllib.request.urlopen(urllib.request.Request(PAGER_URL, body.encode(), method="POST"), timeout=5)

A webhook notifier (Slack-compatible) ships with llamadeploy: set
``LLAMADEPLOY_WEBHOOK_URL`` (``pytest_llamadeploy/notify/webhook.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:  # the policy model (pydantic) and boto3 load only when a gate runs
    from .aws import AwsConfig
    from .bakeprobe import ProbeCheck
    from .ledger import Ledger
    from .metrics.providers import MetricProvider
    from .policy import MetricSource, Policy, ServiceSource, SignalSource
    from .traffic import TrafficDriver
    from .verdict import Verdict

#: The events of ``pytest_llamadeploy_notify``.
NotifyEvent = Literal["start", "pass", "fail", "rollback", "rollback_failed"]


@pytest.hookspec(firstresult=True)
def pytest_llamadeploy_traffic_driver(policy: Policy, aws: AwsConfig) -> TrafficDriver | None:
    """Return the traffic driver for ``policy``, or None for the default (Lambda alias weighted routing).

    The driver implements :class:`pytest_llamadeploy.traffic.TrafficDriver`
    (``read``, ``latest_versions``, ``validate_versions``, ``apply``), as
    :class:`pytest_llamadeploy.traffic.LambdaAliasDriver` does. ``aws`` gives
    boto3 clients for the policy's region and endpoint (``aws.client("lambda")``).
    ``apply`` must move every function or none: the runner relies on it to
    never leave a half-shifted service behind.

    Example: an env whose traffic is split somewhere else than a Lambda alias::

        def pytest_llamadeploy_traffic_driver(policy, aws):
            if policy.name == "edge":
                return EdgeWeightsDriver(aws.client("cloudfront"), policy.service.functions)
    """


@pytest.hookspec(firstresult=True)
def pytest_llamadeploy_ledger_backend(policy: Policy, aws: AwsConfig, rootdir: Path) -> Ledger | None:
    """Return the ledger for ``policy``, or None for the default (``policy.ledger``: DynamoDB table or folder).

    The ledger implements :class:`pytest_llamadeploy.ledger.Ledger`: stage
    records, the per-env lock with a lease (``acquire_lock`` must be atomic
    across machines: it is what keeps two CI jobs from moving one alias), and
    artifacts (backups, preflight results). ``rootdir`` is pytest's rootdir,
    for backends that keep files.

    Example: the file ledger on a shared volume for a runner without DynamoDB::

        from pytest_llamadeploy.ledger import FileLedger

        def pytest_llamadeploy_ledger_backend(policy, aws, rootdir):
            return FileLedger("/mnt/deploy-ledger") if policy.name != "prod" else None

    ``put(record, fence=run_id)`` must write only while the env's lock names
    ``run_id`` and raise :class:`pytest_llamadeploy.ledger.LeaseLost` otherwise
    (the built-in backends: a DynamoDB transaction with a ConditionCheck on the
    lock item; the file ledger checks under its file lock).
    """


@pytest.hookspec(firstresult=True)
def pytest_llamadeploy_metric_provider(
    name: str, source: SignalSource | ServiceSource | MetricSource, policy: Policy
) -> MetricProvider | None:
    """Return the provider of the policy's metrics source ``name``, or None for the default.

    Called once per source, before the stage moves traffic: the built-in ``service`` (the
    functions' own per-version metrics) and ``aws`` (AWS's service metrics), whose default is
    CloudWatch, and each ``metrics.sources.<name>`` (default: its ``provider:``, ``cloudwatch``
    or ``prometheus``; any other provider name must be answered here, or the stage is refused,
    exit 4). ``source`` holds its ``resolution`` and ``lag`` (and ``provider``, ``url``,
    ``timeout`` for a declared source): the watch ends every window ``lag`` before now and asks
    datapoints of ``resolution`` seconds.

    The provider implements :class:`pytest_llamadeploy.metrics.providers.MetricProvider`::

        fetch(specs, start, end) -> {spec: [(bucket_start_epoch_s, value), ...]}

    one call per poll with every series the rules need (:class:`~pytest_llamadeploy.metrics.query.SeriesSpec`:
    ``namespace``, ``metric`` (a metric name, or a custom signal's query), ``dims`` (e.g.
    ``FunctionName``/``Version`` of one Lambda version), ``stat`` (``Sum`` per bucket of ``period``
    seconds, or a percentile such as ``p95`` over one period), ``period``, ``source``). A bucket with
    no data is left out, never reported as 0; an outage raises
    :class:`~pytest_llamadeploy.metrics.query.ProviderError` (``watch.provider_error_limit`` in a
    row is "metrics unavailable"), a refused query :class:`~pytest_llamadeploy.metrics.query.QueryError`.

    Example: a team on Datadog declares ``metrics.sources.dd: {provider: datadog, resolution: 10s,
    lag: 30s}`` and custom signals with ``source: dd``, and in its ``conftest.py``::

        def pytest_llamadeploy_metric_provider(name, source, policy):
            if getattr(source, "provider", "") == "datadog":
                return DatadogProvider(api_key=os.environ["DD_API_KEY"], step=int(source.resolution))

    The Prometheus provider that ships with llamadeploy
    (``pytest_llamadeploy/metrics/prometheus.py``) is a complete example.
    """


@pytest.hookspec
def pytest_llamadeploy_notify(event: NotifyEvent, record: dict[str, Any]) -> None:
    """Called on stage ``start``, ``pass``, ``fail``, ``rollback`` and ``rollback_failed`` with the stage record.
    ``rollback_failed`` means traffic is not where it should be and the env is marked as needing
    attention (every later stage refused until the repair command in ``record["reason"]`` ran): page someone.

    ``record`` is :meth:`pytest_llamadeploy.ledger.StageRecord.to_json` with
    secrets redacted: ``env``, ``stage``, ``release``, ``status`` (``started``,
    ``passed``, ``rolled_back``, ``failed``, ``rollback_failed``; ``lease_lost``
    for a run that lost its lock, which writes nothing more), ``reason``, ``approver``,
    ``run_id``, ``old_versions``/``new_versions`` and ``weights_before``/
    ``weights_after`` per function, and ``details`` (``details["rollback"]``
    holds the rollback's reason, the alias before and after it and, per
    function, whether it got back and the last error). ``rollback`` fires
    as soon as traffic is back, which during a bake is at the first breach,
    before the stage's ``fail``.

    Keep it short and bounded in time. Exceptions are reported but never
    change the verdict: a notifier must not be able to stop a rollback.
    """


@pytest.hookspec
def pytest_llamadeploy_checkpoint(name: str, run_id: str) -> None:
    """Called on the controller at named points of a stage, in order:

    ``lock_acquired`` (before the ``started`` record), ``started``,
    ``alias_written:<function>`` (after each UpdateAlias of the action),
    ``baking`` (the bake began), ``rollback_start``,
    ``rollback_written:<function>`` (after each UpdateAlias of a rollback),
    ``rollback_applied`` (traffic moved back, its record not yet written),
    ``verdict_recorded``.

    For progress reporting and for fault-injection tests (the project's chaos
    tests kill the gate at each). Must return quickly; exceptions are reported
    and ignored.
    """


# -- A team's own probe checks and its say on the verdict (issue 16) ---------------------------------


@pytest.hookspec
def pytest_llamadeploy_probe_checks(policy: Policy) -> list[ProbeCheck] | None:
    """Return active checks of your own for the bake's probes, beside ``path``, ``cache`` and ``event``.

    Called once per gate run on the controller, before anything changes; every implementation's
    list counts. A check runs in a bake only where the env's policy lists its name under
    ``watch.checks`` (so each env chooses its checks), rotating with the built-in ones at
    ``watch.probe_rate``; each check is its own rollback trigger ``<name>_probe_failure_ratio``
    (at least 2 of its last 10 runs failed and more than the error-rate bound: metrics/watch.py)
    on the new version of its function, and the bake rolls back at its first breach. A
    ``watch.checks`` name that is neither built in nor contributed, a name used twice, a
    malformed name (``[a-z][a-z0-9_]*``) or a function not in ``service.functions`` refuses the
    run (exit 4, nothing changed).

    :class:`pytest_llamadeploy.bakeprobe.ProbeCheck` is ``name``, ``run`` and optionally
    ``function`` (default ``service.api_function``) and ``description``. ``run(target)`` gets a
    :class:`pytest_llamadeploy.bakeprobe.ProbeTarget` (``function``, ``version`` under test,
    ``old_version``, ``context``: the :class:`pytest_llamadeploy.context.StageContext`, and
    ``invoke(path, version=None, method="GET", headers=None, body=None)``: one Lambda invoke of
    that version with an API Gateway proxy event, a :class:`pytest_llamadeploy.probe.ProbeResult`)
    and returns ``(ok, detail)``: ``True`` passed, ``False`` failed, ``None`` the probe path
    failed rather than the release (counted apart, never in the trigger's window). An
    exception is a failed check. Keep each run within ``watch.probe_timeout``.

    Example (``conftest.py``; the policy's ``watch: {checks: [path, cache, event, quote]}``)::

        from pytest_llamadeploy.bakeprobe import ProbeCheck

        def quote_has_a_price(target):
            answer = target.invoke("/quote/ETH")
            ok = answer.ok and isinstance(answer.body, dict) and answer.body.get("price", 0) > 0
            return ok, answer.describe()

        def pytest_llamadeploy_probe_checks(policy):
            return [ProbeCheck("quote", quote_has_a_price, description="ETH quote has a price")]
    """


@pytest.hookspec
def pytest_llamadeploy_verdict(verdict: Verdict) -> str | None:
    """The stage's verdict, once the gate decided it: return a reason to fail a passing stage, or None.

    Called once per stage on the controller after every gate test, suite rule and the bake's
    watch were judged and the alias read, and BEFORE anything acts on the verdict: before the
    rollback of a failure and before the verdict is written to the ledger. So a veto is rolled
    back (``rollback_on_failure``) and recorded like any failure; to act on the recorded
    verdict (post it, page someone), use :func:`pytest_llamadeploy_notify`'s ``pass``/``fail``.
    Not called for a run that lost its lock (it decides nothing).

    ``verdict`` is a :class:`pytest_llamadeploy.verdict.Verdict`: ``env``, ``stage``,
    ``release``, ``run_id``, ``status`` (``passed`` or ``failed``), ``reason``,
    ``failed_tests``, ``passed_by_suite`` and ``evidence`` (``watch``: the bake's rules,
    values and probes; ``record``: the stage record so far), secrets redacted.

    A plugin may make the gate stricter, never kinder: a non-empty string vetoes a pass (the
    stage fails with ``threshold breached: a verdict plugin vetoed the pass: <your text>``);
    on a failure, whatever a plugin returns leaves it a failure with its own reason. A hook
    that raises fails a passing stage (``inconclusive: a verdict plugin failed ...``): a
    plugin that cannot answer has not agreed. Every answer is kept in the record's
    ``details["verdict_plugins"]``. Keep it short: the lock is held meanwhile.

    Example: no promotion while a change freeze is on::

        def pytest_llamadeploy_verdict(verdict):
            if verdict.stage == "shift100" and verdict.env == "prod" and freeze_is_on():
                return "change freeze (freeze.example.com): promotion held"
    """
