"""Policies: the runbook's rules as validated YAML, one file per environment.

A policy file may ``extends:`` another (``defaults.yaml`` holds what every
environment shares). Files are deep-merged parent first, lists replaced, then
validated once with pydantic so that every mistake is reported with the file,
the key path, the value and what is allowed, and nothing runs on a bad policy.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .suitenames import KNOWN_SUITES
from .units import Duration, Rate, Threshold

ACTIONS = ("none", "deploy", "shift", "promote", "rollback", "preflight", "backup", "migrate", "restore")
_SECRET_IN_URL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


class PolicyError(Exception):
    """A policy that cannot be used; ``problems`` are complete, self-contained lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    # Unknown keys are errors: a typo in a threshold name must not silently
    # fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Approval(_Model):
    required: bool = False
    #: Environment variables CI may set to carry the approver (first non-empty wins).
    env_vars: list[str] = Field(default_factory=lambda: ["LLAMADEPLOY_APPROVED_BY"])


class DeployCommand(_Model):
    #: argv list, run without a shell. ``{release}`` and ``{env}`` are substituted.
    argv: list[str] = Field(min_length=1)
    timeout: Duration = 900.0
    #: Extra environment for the command; values may reference ``${VAR}``.
    env: dict[str, str] = Field(default_factory=dict)


class Service(_Model):
    functions: list[str] = Field(min_length=1)
    alias: str = "live"
    #: The alias the preview stage calls: the deploy stage points it at the new versions.
    preview_alias: str = "preview"
    #: The function behind the REST API and the one behind the WebSocket API.
    api_function: str
    ws_function: str

    @model_validator(mode="after")
    def _roles_are_functions(self) -> Service:
        for role in ("api_function", "ws_function"):
            name = getattr(self, role)
            if name not in self.functions:
                raise ValueError(f"{role} {name!r} is not one of functions {self.functions}")
        return self


class Stage(_Model):
    action: Literal["none", "deploy", "shift", "promote", "rollback", "preflight", "backup", "migrate", "restore"]
    #: Share of traffic on the new version after the action (shift: 0 < w < 1; deploy: 0 or 1).
    weight: Rate | None = None
    bake: Duration = 0.0
    #: How long the previous version is kept for rollback after a promote.
    keep_previous: Duration | None = None
    suites: list[str] = Field(default_factory=list)
    #: Whether the watch (rollback triggers + probes) runs during this stage.
    watch: bool = False
    description: str = ""

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, suites: list[str]) -> list[str]:
        for suite in suites:
            if suite not in KNOWN_SUITES:
                raise ValueError(f"unknown suite {suite!r}; allowed: {', '.join(KNOWN_SUITES)}")
        return suites

    @model_validator(mode="after")
    def _weight_fits_action(self) -> Stage:
        if self.action == "shift" and (self.weight is None or not 0.0 < self.weight < 1.0):
            raise ValueError(f"a shift stage needs 0% < weight < 100%, got {self.weight!r}")
        if self.action == "deploy" and self.weight not in (None, 0.0, 1.0):
            raise ValueError(f"a deploy stage has weight 0% (blue/green) or 100% (all at once), got {self.weight!r}")
        return self


class MetricRule(_Model):
    """One metric and the condition under which it is healthy: ``value <op> threshold``."""

    signal: str
    description: str = ""
    statistic: str = "auto"
    op: Literal["<", "<=", ">", ">=", "=="]
    threshold: Threshold
    window: Duration = 300.0
    #: Fewer samples than this (requests, datapoints) is "no data" rather than a verdict.
    min_samples: int = Field(default=1, ge=0)
    no_data: Literal["wait", "fail", "pass"] = "wait"
    per_version: bool = True


class Watch(_Model):
    interval: Duration = 10.0
    #: Version-targeted probes per second against the new version during a bake.
    probe_rate: float = Field(default=2.0, ge=0)
    probe_path: str = "/health"
    probe_timeout: Duration = 2.0
    #: Consecutive provider errors (throttling, 5xx, timeouts) that end a stage as inconclusive.
    provider_error_limit: int = Field(default=4, ge=1)
    #: How long "no data" may last before the metric is inconclusive.
    no_data_grace: Duration = 60.0


class Compare(_Model):
    max_error_rate_diff: Rate = 0.01
    max_p95_ratio: float = Field(default=1.5, gt=0)
    #: A slower new version fails only when it is also this much slower in absolute terms:
    #: a p95 going from 20 ms to 40 ms is 2x but within the jitter of a shared host and far
    #: below anything a user notices (Kayenta likewise ignores effects below a floor).
    min_p95_delta: Threshold = 10.0
    #: Significance level of the Mann-Whitney U test on per-interval samples.
    alpha: float = Field(default=0.02, gt=0, lt=1)
    #: How much slower (median per interval) the new version may be before a significant
    #: difference counts (Kayenta's tolerance, 0.25).
    tolerance: float = Field(default=0.25, ge=0)
    #: Seconds after traffic moved that are not compared (connection pools and caches
    #: of the newly weighted version warm up; Argo's initialDelay, Kayenta's warmup).
    warmup: Duration = 60.0
    #: Seconds per sample of the rank test (per-interval p95 latency of each version).
    interval: Duration = 10.0
    min_samples: int = Field(default=20, ge=1)


class Performance(_Model):
    users: int = Field(default=20, ge=1)
    spawn_rate: float = Field(default=10.0, gt=0)
    duration: Duration = 30.0
    api_p95: Threshold = 200.0
    max_failure_ratio: Rate = 0.01
    ws_p95: Threshold = 100.0
    db_p95: Threshold = 50.0
    cache_hit_rate: Rate = 0.80
    #: Representative queries (names from the service contract) measured against the database.
    queries: list[str] = Field(default_factory=list)


class Functional(_Model):
    event_deadline: Duration = 2.0
    alert_deadline: Duration = 5.0


class Targets(_Model):
    """Where the gates probe. ``source: sandbox`` reads the sandbox state; otherwise
    values may reference environment variables as ``${NAME}`` (secrets never live in YAML)."""

    source: Literal["sandbox", "env"] = "env"
    api_url: str = ""
    ws_url: str = ""
    #: The preview stage of the REST and WebSocket APIs: their integrations call the preview alias
    #: (``service.preview_alias``), so they reach the release under test at 0 % (README, AWS section).
    preview_api_url: str = ""
    preview_ws_url: str = ""
    postgres_dsn: str = ""
    redis_url: str = ""
    sqs_queue_url: str = ""

    @field_validator("api_url", "ws_url", "preview_api_url", "preview_ws_url", "postgres_dsn", "redis_url",
                     "sqs_queue_url")
    @classmethod
    def _no_literal_secret(cls, value: str) -> str:
        if _SECRET_IN_URL.search(value):
            raise ValueError(
                "contains a literal password; reference an environment variable instead, e.g. ${LLAMA_POSTGRES_DSN}"
            )
        return value


class Aws(_Model):
    region: str = "us-east-1"
    #: ``sandbox``: endpoint and credentials come from the running sandbox; empty: boto3's standard configuration.
    endpoint: Literal["", "sandbox"] = ""
    max_attempts: int = Field(default=3, ge=1)


class SignalSource(_Model):
    """How a source of metrics serves its data: the period it keeps and how late a datapoint appears."""

    #: Seconds per datapoint: 1, 5, 10, 20, 30 for high-resolution data, else a multiple of 60.
    resolution: Duration
    #: Seconds after which a datapoint has arrived, at worst: windows end this long before now, and the
    #: final decision of a bake waits (at most) this long for the bake's last data.
    lag: Duration

    @field_validator("resolution")
    @classmethod
    def _period_cloudwatch_accepts(cls, value: float) -> float:
        if value in (1, 5, 10, 20, 30) or (value >= 60 and value % 60 == 0):
            return value
        raise ValueError("must be 1s, 5s, 10s, 20s or 30s (high-resolution data) or a multiple of 60s "
                         "(standard resolution: every AWS/* service metric)")


class ServiceSource(SignalSource):
    #: CloudWatch namespace of the functions' Embedded Metric Format metrics (docs/service-contract.md).
    namespace: str = Field(min_length=1)


class Metrics(_Model):
    """Where each signal comes from, at what resolution and delay (see ../shared/AWS.md).

    ``service``: the functions' own EMF metrics (per version, high resolution, seconds late).
    ``aws``: AWS's service metrics (AWS/Lambda, AWS/ApiGateway, AWS/ElastiCache, AWS/DynamoDB):
    60-s datapoints published minutes late on AWS.
    """

    service: ServiceSource
    aws: SignalSource

    def source(self, name: str) -> SignalSource:
        return self.service if name == "service" else self.aws


class Resources(_Model):
    """The AWS names of the service's resources; no resource name lives in code (doctor proves each exists)."""

    #: API Gateway REST API name (the ``ApiName`` metric dimension) and the stage users call.
    rest_api: str = Field(min_length=1)
    rest_stage: str = Field(min_length=1)
    #: WebSocket API id (``ApiId``: AWS's generated id, not a name) and the stage users call.
    ws_api_id: str = Field(min_length=1)
    ws_stage: str = Field(min_length=1)
    #: ElastiCache replication group; its member clusters are ``<group>-001`` ... ``<group>-NNN``.
    cache_group: str = Field(min_length=1)
    cache_nodes: int = Field(default=1, ge=1, le=500)
    #: DynamoDB tables the service uses (throttles are watched on each).
    dynamodb_tables: list[str] = Field(min_length=1)
    #: CloudFormation stack of the service, SNS topic of stakeholder notices, SQS queue of alerts.
    stack: str = Field(min_length=1)
    sns_topic: str = Field(min_length=1)
    alerts_queue: str = Field(min_length=1)
    #: X-Ray service name the API function's traces carry.
    xray_service: str = Field(min_length=1)
    #: Log group per function (default ``/aws/lambda/<function>``).
    log_groups: dict[str, str] = Field(default_factory=dict)

    def cache_clusters(self) -> list[str]:
        """The replication group's member clusters, as ElastiCache names them (CacheClusterId)."""
        return [f"{self.cache_group}-{i:03d}" for i in range(1, self.cache_nodes + 1)]

    def log_group(self, function: str) -> str:
        return self.log_groups.get(function, f"/aws/lambda/{function}")


class Ledger(_Model):
    backend: Literal["dynamodb", "file"] = "dynamodb"
    table: str = "llamadeploy-ledger"
    path: str = ".llamadeploy/ledger"
    lease: Duration = 1800.0


class Monitoring(_Model):
    dashboards: list[str] = Field(default_factory=list)
    #: Alarm names the runbook expects to exist, enabled, and not in ALARM.
    alarms: list[str] = Field(default_factory=list)
    insufficient_data_grace: Duration = 300.0
    require_traces: bool = True
    require_logs: bool = True


class Preflight(_Model):
    required_env_vars: list[str] = Field(default_factory=list)
    backup_max_age: Duration = 86400.0
    #: Deployment window in UTC as ``"HH:MM-HH:MM"`` with allowed ISO weekdays (1 = Monday).
    window: str = ""
    window_days: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    ci_status_env: str = "LLAMADEPLOY_TESTS_PASSED"


class Database(_Model):
    migrations_dir: str = "sql/migrations"
    expected_tables: list[str] = Field(default_factory=list)


class Backup(_Model):
    rds_instance: str = "defillama"
    dynamodb_tables: list[str] = Field(default_factory=list)
    timeout: Duration = 1800.0


class Policy(_Model):
    name: str
    description: str = ""
    extends: str | None = None
    approval: Approval = Approval()
    rollback_on_failure: bool = True
    aws: Aws = Aws()
    service: Service
    deploy: DeployCommand
    targets: Targets = Targets()
    #: The ordered stages of a release: each runs only if the one before it passed.
    plan: list[str] = Field(min_length=1)
    stages: dict[str, Stage]
    metrics: Metrics
    resources: Resources
    key_metrics: dict[str, MetricRule] = Field(default_factory=dict)
    rollback_triggers: dict[str, MetricRule] = Field(default_factory=dict)
    watch: Watch = Watch()
    compare: Compare = Compare()
    performance: Performance = Performance()
    functional: Functional = Functional()
    monitoring: Monitoring = Monitoring()
    preflight: Preflight = Preflight()
    database: Database = Database()
    backup: Backup = Backup()
    ledger: Ledger = Ledger()

    @model_validator(mode="after")
    def _plan_names_stages(self) -> Policy:
        for name in self.plan:
            if name not in self.stages:
                raise ValueError(f"plan names stage {name!r}, which is not under stages: ({', '.join(self.stages)})")
        if len(set(self.plan)) != len(self.plan):
            raise ValueError(f"plan lists a stage twice: {self.plan}")
        return self

    @model_validator(mode="after")
    def _rules_fit_their_source(self) -> Policy:
        """A rule must be answerable at its signal's resolution: a window holding at least one
        datapoint, and no more datapoints asked (min_samples of a datapoint-counted signal) than
        the window can hold."""
        from .metrics.signals import UnknownSignal, get_signal

        problems = []
        for section in ("key_metrics", "rollback_triggers"):
            for name, rule in getattr(self, section).items():
                try:
                    signal = get_signal(rule.signal)
                except UnknownSignal as exc:
                    problems.append(f"{section}.{name}.signal: {exc}")
                    continue
                source = self.metrics.source(signal.source)
                where = f"{section}.{name}"
                if rule.window < source.resolution:
                    problems.append(f"{where}.window = {rule.window:g}s is shorter than one datapoint of its "
                                    f"signal {signal.name} (metrics.{signal.source}.resolution = "
                                    f"{source.resolution:g}s): lengthen the window")
                elif not signal.samples and rule.min_samples > rule.window // source.resolution:
                    problems.append(f"{where}.min_samples = {rule.min_samples} datapoints cannot fit its window of "
                                    f"{rule.window:g}s at {source.resolution:g}s per datapoint "
                                    f"(at most {int(rule.window // source.resolution)})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def previous_stage(self, stage: str) -> str | None:
        """The plan stage that must have passed before ``stage`` (None for the first and for operations)."""
        if stage not in self.plan:
            return None
        index = self.plan.index(stage)
        return self.plan[index - 1] if index else None


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    #: The files merged, parent first.
    files: tuple[Path, ...]
    #: The merged document, as validated (for the report and the hash).
    document: Mapping[str, Any]

    @property
    def sha256(self) -> str:
        raw = json.dumps(self.document, sort_keys=True, default=str).encode()
        return hashlib.sha256(raw).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]


def available_envs(policy_dir: Path) -> list[str]:
    """Environment names in ``policy_dir`` (every ``*.yaml`` but ``defaults``)."""
    if not policy_dir.is_dir():
        return []
    return sorted(p.stem for p in policy_dir.glob("*.yaml") if p.stem != "defaults" and not p.stem.startswith("_"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PolicyError([f"{path}: not valid YAML: {exc}"]) from None
    except OSError as exc:
        raise PolicyError([f"{path}: cannot be read: {exc.strerror}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError([f"{path}: the top level must be a mapping of keys, got {type(data).__name__}"])
    return data


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _chain(policy_dir: Path, env: str) -> list[tuple[Path, dict[str, Any]]]:
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: set[str] = set()
    name: str | None = env
    while name is not None:
        if name in seen:
            raise PolicyError([f"{policy_dir / (env + '.yaml')}: extends: loops through {name!r}"])
        seen.add(name)
        path = policy_dir / f"{name}.yaml"
        if not path.is_file():
            if not chain:
                allowed = ", ".join(available_envs(policy_dir)) or "(none: the folder has no *.yaml)"
                raise PolicyError([f"{path}: no policy for env {env!r}; allowed: {allowed}"])
            child = chain[-1][0]
            raise PolicyError([f"{child}: extends: {name!r} has no file {path}"])
        data = _read_yaml(path)
        chain.append((path, data))
        parent = data.get("extends")
        if parent is not None and not isinstance(parent, str):
            raise PolicyError([f"{path}: extends: {parent!r} must be the name of another policy file"])
        name = parent
    return list(reversed(chain))


def _origin(chain: list[tuple[Path, dict[str, Any]]], loc: tuple[Any, ...]) -> Path:
    """The last file in the chain that spells out (a prefix of) ``loc``: where to fix it."""
    best = chain[-1][0]
    best_depth = -1
    for path, data in chain:
        node: Any = data
        depth = 0
        for part in loc:
            if isinstance(node, Mapping) and part in node:
                node = node[part]
                depth += 1
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
                depth += 1
            else:
                break
        if depth >= best_depth and depth > 0:
            best, best_depth = path, depth
    return best


def _describe(chain: list[tuple[Path, dict[str, Any]]], exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key; check the spelling (llamadeploy policy schema lists every key)"
        elif error["type"] == "missing":
            message = "required key is missing"
        value = error.get("input")
        shown = "" if error["type"] == "missing" or isinstance(value, dict) else f" = {value!r}"
        problems.append(f"{_origin(chain, loc)}: {path}{shown}: {message}")
    return problems


def load_policy(policy_dir: Path | str, env: str) -> LoadedPolicy:
    """Load, merge and validate ``env``'s policy; raise :class:`PolicyError` listing every problem."""
    policy_dir = Path(policy_dir)
    if not policy_dir.is_dir():
        raise PolicyError([f"{policy_dir}: policy folder not found; pass --policy-dir or set llamadeploy_policy_dir"])
    chain = _chain(policy_dir, env)
    document: dict[str, Any] = {}
    for _, data in chain:
        document = _merge(document, data)
    document["name"] = env
    document.pop("extends", None)
    try:
        policy = Policy.model_validate(document)
    except ValidationError as exc:
        raise PolicyError(_describe(chain, exc)) from None
    return LoadedPolicy(policy=policy, files=tuple(p for p, _ in chain), document=document)


def json_schema() -> dict[str, Any]:
    """JSON Schema for editors (one schema for every policy file; all keys optional but where noted)."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llamadeploy policy"
    return schema
