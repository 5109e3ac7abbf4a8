"""Policies: the runbook's rules as validated YAML, one file per environment.

A policy file may ``extends:`` another (``defaults.yaml`` holds what every
environment shares). Files are deep-merged parent first, lists replaced, then
validated once with pydantic so that every mistake is reported with the file,
the key path, the value and what is allowed, and nothing runs on a bad policy.

An env name is exactly the name of a policy file in the folder (``a-z``,
``0-9``, ``_``, ``-``): ``--env=./prod`` or ``prod/`` would load prod's policy
under another name, and so another ledger key and another lock. Every number
is finite and bounded in every env (see :mod:`.units`); the files are read by
:mod:`.policy_yaml`, which refuses aliases, duplicate keys and non-UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .policy_yaml import PolicyYamlError, clip, read_policy_yaml
from .suitenames import KNOWN_SUITES, SUITE_NAME
from .units import Duration, Rate, Threshold, duration_within, format_duration, number_within

ACTIONS = ("none", "deploy", "shift", "promote", "rollback", "preflight", "backup", "migrate", "restore")
_SECRET_IN_URL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
#: An env (and an ``extends:`` target) is the name of a policy file: lower-case letters, digits, '_' and '-'.
ENV_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: Placeholders ``deploy.argv`` may use (``str.format`` fields).
ARGV_PLACEHOLDERS = ("env", "release")
#: At most this many problems are listed: a list of 10,000 bad items is one mistake, not 10,000 lines.
MAX_PROBLEMS = 40
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Variables that are set in every shell or CI job whatever anyone approved: naming one in
#: ``approval.env_vars`` turns the approval into a formality (HOME is always set).
GENERIC_ENV_VARS = frozenset({
    "HOME", "USER", "LOGNAME", "USERNAME", "PATH", "PWD", "OLDPWD", "SHELL", "SHLVL", "TERM", "LANG", "LC_ALL",
    "HOSTNAME", "TMPDIR", "EDITOR", "MAIL", "DISPLAY", "SSH_CONNECTION", "SSH_CLIENT", "SUDO_USER", "CI",
    "VIRTUAL_ENV", "PYTHONPATH", "_",
})
#: Prefixes of variables a CI system sets in every job (GitHub Actions, its runners, GitLab, Buildkite,
#: Jenkins, CircleCI) and of AWS's own: GITHUB_ACTOR names whoever pushed, not who approved.
GENERIC_ENV_PREFIXES = ("GITHUB_", "RUNNER_", "CI_", "GITLAB_", "BUILDKITE", "JENKINS_", "CIRCLE", "AWS_")


class PolicyError(Exception):
    """A policy that cannot be used; ``problems`` are complete, self-contained lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def is_generic_env_var(name: str) -> bool:
    """Is ``name`` set in every shell or CI job (and so no evidence of an approval)?"""
    return name.upper() in GENERIC_ENV_VARS or name.upper().startswith(GENERIC_ENV_PREFIXES)


class _Model(BaseModel):
    # Unknown keys are errors: a typo in a threshold name must not silently
    # fall back to a default.
    # NaN and infinity are refused for every float (YAML spells them .nan and .inf).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Approval(_Model):
    required: bool = False
    #: Environment variables CI may set to carry the approver (first non-empty wins).
    env_vars: list[str] = Field(default_factory=lambda: ["LLAMADEPLOY_APPROVED_BY"])

    @field_validator("env_vars")
    @classmethod
    def _specific_variables(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _ENV_VAR.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits, '_')")
            if is_generic_env_var(name):
                raise ValueError(f"{name!r} is set in every shell or CI job whoever approved: an approval variable "
                                 "must be one only an approval sets, e.g. LLAMADEPLOY_APPROVED_BY")
        return names


class DeployCommand(_Model):
    #: argv list, run without a shell. ``{release}`` and ``{env}`` are substituted.
    argv: list[str] = Field(min_length=1)
    #: Above 0, at most 6 h: a deploy that takes longer is stuck, and the lock is held meanwhile.
    timeout: Annotated[Duration, duration_within(0, 6 * 3600, above=True)] = 900.0
    #: Extra environment for the command; values may reference ``${VAR}``.
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("argv")
    @classmethod
    def _known_placeholders(cls, argv: list[str]) -> list[str]:
        # Checked here, not when the command runs: by then the lock is taken and the record written.
        allowed = ", ".join(f"{{{p}}}" for p in ARGV_PLACEHOLDERS)
        for part in argv:
            try:
                fields = [(name, conv, spec) for _, name, spec, conv in string.Formatter().parse(part) if name is not None]
            except ValueError as exc:
                raise ValueError(f"{part!r}: {exc}; placeholders are {allowed}, a literal brace is written {{{{ or }}}}") from None
            for name, conv, spec in fields:
                if name not in ARGV_PLACEHOLDERS or conv or spec:
                    raise ValueError(f"{part!r}: unknown placeholder {{{name}{'!' + conv if conv else ''}"
                                     f"{':' + spec if spec else ''}}}; allowed: {allowed}")
        return argv


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
    bake: Annotated[Duration, duration_within(0, 86400)] = 0.0
    #: How long the previous version is kept for rollback after a promote.
    keep_previous: Duration | None = None
    suites: list[str] = Field(default_factory=list)
    #: Whether the watch (rollback triggers + probes) runs during this stage.
    watch: bool = False
    description: str = ""

    # Each name must be a built-in suite or one the policy declares under ``suites:`` (Policy._suites_declared).

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
    #: At least 1 s, CloudWatch's finest period; at most a day.
    window: Annotated[Duration, duration_within(1, 86400)] = 300.0
    #: Fewer samples than this (requests, datapoints) is "no data" rather than a verdict.
    min_samples: Annotated[int, number_within(0, 1_000_000)] = 1
    no_data: Literal["wait", "fail", "pass"] = "wait"
    per_version: bool = True
    #: ``old``: judge the new version against the old one over the same seconds (a shift's two
    #: versions). ``threshold`` is then how much worse the new one may be: with ``<=``/``<`` the
    #: new value must stay under old + threshold (latency: 50ms), with ``>=``/``>`` above
    #: old - threshold (hit rate: 10%). ``min_samples`` applies to each version.
    baseline: Literal["", "old"] = ""
    #: With ``baseline: old`` on a ``<=``/``<`` rule: the new value may also be up to this many
    #: times the old one (a floor AND a ratio must both be exceeded to convict: jitter on a fast
    #: service is small in ms and large in ratio, on a slow one the other way round).
    max_ratio: Annotated[float, number_within(1, 100)] | None = None
    #: With ``baseline: old`` on a ratio signal (a hit rate, a delivery ratio): the new version fails
    #: only when it is worse by more than ``threshold`` AND by more than chance explains at this
    #: significance level (a one-sided two-proportion z-test on the two versions' counts). At 10 %
    #: and a few seconds, 33 lookups a side read 75.8 % against 97 % on a healthy release.
    alpha: Annotated[float, number_within(0, 0.5, above=True)] = 0.001
    #: Observe-only (Argo Rollouts' per-metric ``dryRun``): the rule is evaluated and reported in the
    #: verdict, marked observed, and never acts: a breach rolls nothing back and fails no stage.
    #: For tuning a new rule before it is enforced; prod's guard refuses it on a rule the runbook requires.
    observe: bool = False

    @model_validator(mode="after")
    def _baseline_fits(self) -> MetricRule:
        if self.baseline and self.op == "==":
            raise ValueError("baseline: old needs an ordering op (<, <=, >, >=), not ==")
        if self.baseline and not self.per_version:
            raise ValueError("baseline: old compares two versions: per_version must stay true")
        if self.max_ratio is not None and not (self.baseline and self.op in ("<", "<=")):
            raise ValueError("max_ratio applies to a baseline: old rule with op < or <=")
        return self


class Watch(_Model):
    #: One GetMetricData per poll: 0 s would spin on the API, more than 5 m watches a 1-minute trigger blind.
    interval: Annotated[Duration, duration_within(1, 300)] = 10.0
    #: Version-targeted probes per second against the new version during a bake (at most 50/s: a probe
    #: is a request to production, not a load test).
    probe_rate: Annotated[float, number_within(0, 50)] = 2.0
    probe_path: str = "/health"
    probe_timeout: Annotated[Duration, duration_within(0, 60, above=True)] = 2.0
    #: The active checks the probes rotate over (bakeprobe.py): ``path`` (GET probe_path), ``cache``
    #: (a cached key read fresh, then from the cache), ``event`` (a test event through the new API
    #: version to a subscriber on the new WebSocket version). Each has its own failure-ratio trigger.
    #: A team's own checks are named here too: those a plugin contributes (pytest_llamadeploy_probe_checks,
    #: newhooks.py); the gate refuses (exit 4) a name that is neither built in nor contributed.
    checks: Annotated[list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]], Field(min_length=1)] = [
        "path", "cache", "event"]
    #: The chain the event check publishes to: one no alert rule and no functional test uses.
    probe_event_chain: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = "llamadeploy-probe"
    #: Consecutive provider errors (throttling, 5xx, timeouts) that end a stage as inconclusive.
    provider_error_limit: Annotated[int, number_within(1, 100)] = 4
    #: How long "no data" may last before the metric is inconclusive.
    no_data_grace: Annotated[Duration, duration_within(0, 3600)] = 60.0
    #: What an inconclusive watch does: ``fail`` (the stage fails and rolls back) or ``pause`` (the
    #: stage ends ``paused``, exit 6, traffic left where it put it, until ``llamadeploy decide``).
    on_inconclusive: Literal["fail", "pause"] = "fail"


class Compare(_Model):
    max_error_rate_diff: Rate = 0.01
    max_p95_ratio: Annotated[float, number_within(0, 100, above=True)] = 1.5
    #: A slower new version fails only when it is also this much slower in absolute terms:
    #: a p95 going from 20 ms to 40 ms is 2x but within the jitter of a shared host and far
    #: below anything a user notices (Kayenta likewise ignores effects below a floor).
    min_p95_delta: Threshold = 10.0
    #: Significance level of the Mann-Whitney U test on per-interval samples.
    alpha: float = Field(default=0.02, gt=0, lt=1)
    #: How much slower (median per interval) the new version may be before a significant
    #: difference counts (Kayenta's tolerance, 0.25).
    tolerance: Annotated[float, number_within(0, 10)] = 0.25
    #: Seconds after traffic moved that are not compared (connection pools and caches
    #: of the newly weighted version warm up; Argo's initialDelay, Kayenta's warmup).
    warmup: Annotated[Duration, duration_within(0, 3600)] = 60.0
    #: Seconds per sample of the rank test (per-interval p95 latency of each version).
    interval: Annotated[Duration, duration_within(1, 3600)] = 10.0
    min_samples: Annotated[int, number_within(1, 100_000)] = 20


class Performance(_Model):
    users: Annotated[int, number_within(1, 10_000)] = 20
    spawn_rate: Annotated[float, number_within(0, 10_000, above=True)] = 10.0
    duration: Annotated[Duration, duration_within(1, 3600)] = 30.0
    api_p95: Threshold = 200.0
    max_failure_ratio: Rate = 0.01
    ws_p95: Threshold = 100.0
    db_p95: Threshold = 50.0
    cache_hit_rate: Rate = 0.80
    #: Representative queries (names from the service contract) measured against the database.
    queries: list[str] = Field(default_factory=list)


class Functional(_Model):
    event_deadline: Annotated[Duration, duration_within(0, 600, above=True)] = 2.0
    alert_deadline: Annotated[Duration, duration_within(0, 600, above=True)] = 5.0


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
    max_attempts: Annotated[int, number_within(1, 20)] = 3
    #: How long one AWS API call may wait for an answer before it counts as failed (and is retried).
    read_timeout: Annotated[Duration, duration_within(0, 300, above=True)] = 20.0


class SignalSource(_Model):
    """How a source of metrics serves its data: the period it keeps and how late a datapoint appears."""

    #: Seconds per datapoint: 1, 5, 10, 20, 30 for high-resolution data, else a multiple of 60.
    resolution: Annotated[Duration, duration_within(1, 3600)]
    #: Seconds after which a datapoint has arrived, at worst: windows end this long before now, and the
    #: final decision of a bake waits (at most) this long for the bake's last data.
    lag: Annotated[Duration, duration_within(0, 3600)]

    @field_validator("resolution")
    @classmethod
    def _period_cloudwatch_accepts(cls, value: float) -> float:
        return cloudwatch_period(value)


def cloudwatch_period(value: float) -> float:
    """``value`` if CloudWatch serves datapoints at that period, else the error saying which it does."""
    if value in (1, 5, 10, 20, 30) or (value >= 60 and value % 60 == 0):
        return value
    raise ValueError("must be 1s, 5s, 10s, 20s or 30s (high-resolution data) or a multiple of 60s "
                     "(standard resolution: every AWS/* service metric)")


class ServiceSource(SignalSource):
    #: CloudWatch namespace of the functions' Embedded Metric Format metrics (docs/service-contract.md).
    namespace: str = Field(min_length=1)


#: The built-in metric providers (``metrics.sources.<name>.provider``); a plugin may answer any other
#: name through ``pytest_llamadeploy_metric_provider`` (newhooks.py).
BUILTIN_PROVIDERS = ("cloudwatch", "prometheus")
#: What a custom signal's ``dimensions`` values may name (filled per function and version).
DIMENSION_PLACEHOLDERS = ("function", "version", "alias")
#: What a PromQL ``query`` may name besides its signal's dimensions: the datapoint's period, the
#: window of a percentile and its quantile (0.95 for p95), each in PromQL's own spelling.
QUERY_PLACEHOLDERS = ("period", "window", "quantile")
_PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_CUSTOM_SIGNAL = re.compile(r"custom\.[a-z0-9_]{1,48}")


def placeholders(template: str) -> list[str]:
    """The ``$name`` / ``${name}`` placeholders of a template (``string.Template``; ``$$`` is a dollar)."""
    return list(dict.fromkeys(string.Template(template).get_identifiers()))


class MetricSource(_Model):
    """A source of metrics declared under ``metrics.sources`` and the provider that serves it.

    ``provider: cloudwatch`` reads CloudWatch like the built-in sources; ``prometheus`` asks a
    Prometheus server's HTTP API (``url``: ``http(s)://host:port``, or ``${VARIABLE}`` naming
    an environment variable set by CI, since a URL may carry credentials); any other name must be
    answered by a plugin (``pytest_llamadeploy_metric_provider``), or the stage is refused before
    traffic moves.
    """

    provider: str
    #: Seconds per datapoint. CloudWatch: its periods (1, 5, 10, 20, 30 s, n x 60 s); Prometheus:
    #: any whole second at least its scrape interval.
    resolution: Annotated[Duration, duration_within(1, 3600)]
    lag: Annotated[Duration, duration_within(0, 3600)]
    url: str = ""
    #: How long one query may take before it counts as a provider error.
    timeout: Annotated[Duration, duration_within(0, 120, above=True)] = 10.0

    @field_validator("provider")
    @classmethod
    def _provider_name(cls, value: str) -> str:
        if not _PROVIDER_NAME.fullmatch(value):
            raise ValueError(f"must be {' or '.join(BUILTIN_PROVIDERS)}, or a plugin's provider name "
                             "(a-z, 0-9, '_', '-')")
        return value

    @model_validator(mode="after")
    def _fits_provider(self) -> MetricSource:
        if self.provider == "cloudwatch":
            cloudwatch_period(self.resolution)
        elif self.resolution != int(self.resolution):
            raise ValueError(f"resolution {self.resolution:g}s: must be whole seconds")
        if self.provider == "prometheus":
            url = self.url
            if not (re.fullmatch(r"https?://[^\s/]+(/\S*)?", url) or re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", url)):
                raise ValueError(f"url {url!r}: a prometheus source needs url: http://HOST:PORT (or ${{VARIABLE}})")
            if _SECRET_IN_URL.search(url):
                raise ValueError("url carries a password: reference an environment variable instead (url: ${PROM_URL})")
        return self


class CustomSignal(_Model):
    """A signal a team declares (``metrics.signals.custom.<name>``) for rules to use as ``signal:``.

    Its kind follows from what is declared: a ``statistic`` such as ``p95`` is a percentile; a
    ``denominator`` (``denominator_query``) makes a ratio of sums; otherwise a sum (a count).

    CloudWatch (source ``service``, ``aws`` or a ``cloudwatch`` source): ``namespace`` (the service
    source's by default), ``metric``, ``denominator`` metric names, ``dimensions`` (values may name
    ``$function``, ``$version``, ``$alias``). Prometheus: ``query`` (and ``denominator_query``) in
    PromQL; for a sum or ratio it is a counter (the provider takes the increase per datapoint), for
    a percentile a histogram's bucket counters by ``le`` (``sum by (le) (x_bucket{...})``); its
    ``$name`` placeholders are the signal's dimensions (``function``, ``version`` unless declared).
    """

    source: str
    description: str = ""
    scope: Literal["function", "api", "ws", "global"] = "api"
    unit: Literal["rate", "ms", "count"] = "count"
    statistic: str = "Sum"
    namespace: str = ""
    metric: str = ""
    denominator: list[str] = Field(default_factory=list)
    dimensions: dict[str, str] = Field(default_factory=dict)
    query: str = ""
    denominator_query: str = ""
    #: What the samples are called in a message ("requests", "lookups").
    samples_noun: str = "samples"

    @field_validator("statistic")
    @classmethod
    def _statistic(cls, value: str) -> str:
        if value == "Sum" or re.fullmatch(r"p(100|[1-9][0-9]?(\.[0-9]+)?)", value):
            return value
        raise ValueError("must be Sum (a count or a ratio of counts) or a percentile such as p95, p99")

    @property
    def kind(self) -> Literal["ratio", "sum", "percentile"]:
        if self.statistic != "Sum":
            return "percentile"
        return "ratio" if (self.denominator or self.denominator_query) else "sum"


class Metrics(_Model):
    """Where each signal comes from, at what resolution and delay (see ../shared/AWS.md).

    ``service``: the functions' own EMF metrics (per version, high resolution, seconds late).
    ``aws``: AWS's service metrics (AWS/Lambda, AWS/ApiGateway, AWS/ElastiCache, AWS/DynamoDB):
    60-s datapoints published minutes late on AWS.
    ``sources``: more sources, each with its provider (CloudWatch, Prometheus, a plugin's).
    ``signals``: custom signals (``custom.<name>``) for rules to use, from any source.
    """

    service: ServiceSource
    aws: SignalSource
    sources: dict[str, MetricSource] = Field(default_factory=dict)
    signals: dict[str, CustomSignal] = Field(default_factory=dict)

    def source(self, name: str) -> SignalSource | MetricSource:
        if name == "service":
            return self.service
        if name == "aws":
            return self.aws
        return self.sources[name]

    def provider_of(self, name: str) -> str:
        """The provider serving source ``name`` (``cloudwatch`` for the built-in sources)."""
        return self.sources[name].provider if name in self.sources else "cloudwatch"

    @model_validator(mode="after")
    def _signals_fit_sources(self) -> Metrics:
        problems: list[tuple[tuple[str, ...], Any, str]] = []
        for name in self.sources:
            if name in ("service", "aws") or not _PROVIDER_NAME.fullmatch(name):
                problems.append((("metrics", "sources", name), name, "a source name is a-z, 0-9, '_', '-' and "
                                 "not service or aws (those are built in): rename it"))
        known = ["service", "aws", *self.sources]
        for name, sig in self.signals.items():
            at = ("metrics", "signals", name)
            if not _CUSTOM_SIGNAL.fullmatch(name):
                problems.append((at, name, "a custom signal is named custom.<name> (a-z, 0-9, '_'), apart from "
                                 "the built-in signals: rename it"))
            if sig.source not in known:
                problems.append(((*at, "source"), sig.source, f"not a source; use one of {', '.join(known)} or "
                                 "declare it under metrics.sources"))
                continue
            for dim, value in sig.dimensions.items():
                bad = [p for p in placeholders(value) if p not in DIMENSION_PLACEHOLDERS]
                if bad or (sig.scope == "global" and placeholders(value)):
                    problems.append(((*at, "dimensions", dim), value, "a dimension value may name $" + ", $".join(
                        DIMENSION_PLACEHOLDERS) + " (none in a global signal: its one series is named as is)"))
            if self.provider_of(sig.source) == "prometheus":
                problems += self._promql_problems(at, sig)
            elif self.provider_of(sig.source) == "cloudwatch":
                if not sig.metric:
                    problems.append(((*at, "metric"), sig.metric, "a CloudWatch signal needs metric: the metric name"))
                if not sig.namespace and sig.source != "service":
                    problems.append(((*at, "namespace"), sig.namespace, "a CloudWatch signal needs namespace (only "
                                     "source service has one by default)"))
                if sig.query or sig.denominator_query:
                    problems.append(((*at, "query"), sig.query or sig.denominator_query,
                                     f"source {sig.source} is CloudWatch: use metric and denominator, not a query"))
                if not sig.dimensions and sig.scope == "global":
                    problems.append(((*at, "dimensions"), {}, "a global CloudWatch signal needs its dimensions"))
        if problems:
            raise LocatedProblems(problems)
        return self

    @staticmethod
    def _promql_problems(at: tuple[str, ...], sig: CustomSignal) -> list[tuple[tuple[str, ...], Any, str]]:
        problems: list[tuple[tuple[str, ...], Any, str]] = []
        if not sig.query:
            problems.append(((*at, "query"), sig.query, "a prometheus signal needs query: its PromQL"))
        if sig.metric or sig.denominator:
            problems.append(((*at, "metric"), sig.metric or sig.denominator,
                             f"source {sig.source} is Prometheus: use query and denominator_query"))
        dims = list(sig.dimensions) or (["function", "version"] if sig.scope != "global" else [])
        allowed = [*dims, *QUERY_PLACEHOLDERS]
        for key in ("query", "denominator_query"):
            text = getattr(sig, key)
            try:
                bad = [p for p in placeholders(text) if p not in allowed]
            except ValueError as exc:  # a lone '$': string.Template cannot read it
                bad = [str(exc)]
            if bad:
                problems.append(((*at, key), text, f"unknown placeholder ${bad[0]}; it may name $"
                                 + ", $".join(allowed) + " (write $$ for a dollar)"))
        if sig.kind == "percentile" and sig.denominator_query:
            problems.append(((*at, "denominator_query"), sig.denominator_query,
                             "a percentile has no denominator: drop it or set statistic: Sum"))
        return problems


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
    cache_nodes: Annotated[int, number_within(1, 500)] = 1
    #: DynamoDB tables the service uses (throttles are watched on each).
    dynamodb_tables: list[str] = Field(min_length=1)
    #: CloudFormation stack of the service, SNS topic of stakeholder notices, SQS queue of alerts.
    stack: str = Field(min_length=1)
    sns_topic: str = Field(min_length=1)
    alerts_queue: str = Field(min_length=1)
    #: SNS topic the service publishes each alert to; the alerts queue (its real consumer's) is subscribed.
    #: The functional suite reads alerts from a queue of its own subscribed for the run, never from alerts_queue.
    alerts_topic: str = Field(min_length=1)
    #: X-Ray service name the API function's traces carry.
    xray_service: str = Field(min_length=1)
    #: Log group per function (default ``/aws/lambda/<function>``).
    log_groups: dict[str, str] = Field(default_factory=dict)

    def cache_clusters(self) -> list[str]:
        """The replication group's member clusters, as ElastiCache names them (CacheClusterId)."""
        return [f"{self.cache_group}-{i:03d}" for i in range(1, self.cache_nodes + 1)]

    def log_group(self, function: str) -> str:
        return self.log_groups.get(function, f"/aws/lambda/{function}")


#: The suites that write test data (tagged with the run id, removed afterwards) and what they write.
WRITING_SUITES = {
    "functional": "alert rules and alerts (PostgreSQL), the chains' last TVL (Redis), alerts through the alert topic",
    "performance": "TVL events of a run-tagged chain: its last TVL (Redis) and events to every tvl subscriber",
}


class TestData(_Model):
    """Which suites may write test data in this env; a suite not listed runs its read-only checks only."""

    #: Each listed suite tags what it writes with the run id and removes it afterwards, even when a test fails.
    write: list[str] = Field(default_factory=lambda: ["functional", "performance"])

    @field_validator("write")
    @classmethod
    def _known_writers(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in WRITING_SUITES]
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))}: not a suite that writes test data; use "
                             f"{' and/or '.join(WRITING_SUITES)} (or [] for read-only suites)")
        return value


class Ledger(_Model):
    backend: Literal["dynamodb", "file"] = "dynamodb"
    table: str = "llamadeploy-ledger"
    path: str = ".llamadeploy/ledger"
    #: How long the env lock is held without renewal: 0 would let any other run take it at once.
    lease: Annotated[Duration, duration_within(0, 86400, above=True)] = 1800.0


class Monitoring(_Model):
    dashboards: list[str] = Field(default_factory=list)
    #: Alarm names the runbook expects to exist, enabled, and not in ALARM.
    alarms: list[str] = Field(default_factory=list)
    insufficient_data_grace: Annotated[Duration, duration_within(0, 86400)] = 300.0
    require_traces: bool = True
    require_logs: bool = True


class Preflight(_Model):
    required_env_vars: list[str] = Field(default_factory=list)
    backup_max_age: Duration = 86400.0
    #: Deployment window in UTC as ``"HH:MM-HH:MM"`` with allowed ISO weekdays (1 = Monday).
    window: str = ""
    window_days: list[Annotated[int, number_within(1, 7)]] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    ci_status_env: str = "LLAMADEPLOY_TESTS_PASSED"
    #: Prove at preflight that every name under ``resources:`` and every series of the rules exists
    #: (ops/proven.py, as ``llamadeploy doctor`` does); a ``no_data: pass`` rule whose series CloudWatch
    #: does not list refuses the preflight stage.
    prove_names: bool = True


class Database(_Model):
    migrations_dir: str = "sql/migrations"
    expected_tables: list[str] = Field(default_factory=list)
    #: A migration waiting this long for a table lock fails (and is rolled back) instead of queueing every
    #: reader of that table behind it; a statement running longer than statement_timeout is cancelled.
    lock_timeout: Annotated[Duration, duration_within(0, 3600, above=True)] = 10.0
    statement_timeout: Annotated[Duration, duration_within(0, 86400, above=True)] = 900.0


class Backup(_Model):
    rds_instance: str = "defillama"
    dynamodb_tables: list[str] = Field(default_factory=list)
    timeout: Annotated[Duration, duration_within(0, 86400, above=True)] = 1800.0


class SuiteSpec(_Model):
    """A team's own gate suite: the folder ``suites/<name>/`` (or tests marked ``llamadeploy_suite("<name>")``)."""

    description: str = ""


class Policy(_Model):
    name: str
    description: str = ""
    extends: str | None = None
    #: The team's own suites, by name (a folder under suites/), beside the built-in ones (suitenames.py):
    #: a stage may list only a built-in or declared suite, and a folder under suites/ named neither is refused.
    suites: dict[Annotated[str, Field(pattern=SUITE_NAME)], SuiteSpec | None] = Field(default_factory=dict)
    #: Unset: guarded when the env is prod, or extends prod and acts on AWS (guard.is_guarded). ``false`` says, in
    #: review, that an env extending prod is not production (a test env pointed elsewhere); prod itself cannot.
    guarded: bool | None = None
    approval: Approval = Approval()
    rollback_on_failure: bool = True
    #: A rollback is retried with backoff (0.5 s doubling to 8 s) until this long after its first attempt.
    rollback_deadline: Annotated[Duration, duration_within(0, 3600, above=True)] = 120.0
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
    test_data: TestData = TestData()
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

    def suite_catalogue(self) -> tuple[str, ...]:
        """Every suite a stage of this env may list: the built-in ones, then those declared under ``suites:``."""
        return (*KNOWN_SUITES, *(s for s in self.suites if s not in KNOWN_SUITES))

    @model_validator(mode="after")
    def _suites_declared(self) -> Policy:
        catalogue = self.suite_catalogue()
        problems: list[tuple[tuple[str, ...], Any, str]] = []
        for name, stage in self.stages.items():
            for i, suite in enumerate(stage.suites):
                if suite not in catalogue:
                    problems.append((("stages", name, "suites", str(i)), suite,
                                     f"unknown suite; allowed: {', '.join(catalogue)}; declare your own at the "
                                     f"top level: suites: {{{suite}: {{}}}}"))
        if problems:
            raise LocatedProblems(problems)
        return self

    @model_validator(mode="after")
    def _rules_fit_their_source(self) -> Policy:
        """A rule must be answerable at its signal's resolution: a window holding at least one
        datapoint, and no more datapoints asked (min_samples of a datapoint-counted signal) than
        the window can hold."""
        from .metrics.signals import UnknownSignal, get_signal

        problems: list[tuple[tuple[str, ...], Any, str]] = []
        for section in ("key_metrics", "rollback_triggers"):
            for name, rule in getattr(self, section).items():
                try:
                    signal = get_signal(rule.signal, policy=self)
                except UnknownSignal as exc:
                    problems.append(((section, name, "signal"), rule.signal, str(exc)))
                    continue
                source = self.metrics.source(signal.source)
                if rule.baseline and not signal.versioned:
                    problems.append(((section, name, "baseline"), rule.baseline,
                                     f"signal {signal.name} has no per-version series to compare: use a "
                                     "per-version signal or drop baseline"))
                if rule.window < source.resolution:
                    problems.append(((section, name, "window"), format_duration(rule.window),
                                     f"shorter than one datapoint of its signal {signal.name} (metrics."
                                     f"{signal.source}.resolution = {source.resolution:g}s): lengthen the window"))
                elif not signal.samples and rule.min_samples > rule.window // source.resolution:
                    most = int(rule.window // source.resolution)
                    problems.append(((section, name, "min_samples"), rule.min_samples,
                                     f"{rule.min_samples} datapoints cannot fit its window of {rule.window:g}s at "
                                     f"{source.resolution:g}s per datapoint: set min_samples to at most {most}, or "
                                     "lengthen the window"))
        if problems:
            raise LocatedProblems(problems)
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
    #: Each file's own data, in the order of ``files`` (to name the file that sets a key).
    sources: tuple[Mapping[str, Any], ...] = field(default=(), compare=False, repr=False)

    @property
    def sha256(self) -> str:
        raw = json.dumps(self.document, sort_keys=True, default=str).encode()
        return hashlib.sha256(raw).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def origin(self, key: str) -> Path:
        """The file to edit for the dotted ``key``: the last in the chain that spells it out (or the env's own)."""
        loc = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        return _origin(list(zip(self.files, self.sources, strict=True)), loc) if self.sources else self.files[-1]


def is_env_name(name: str) -> bool:
    return ENV_NAME.fullmatch(name) is not None


def available_envs(policy_dir: Path) -> list[str]:
    """Environment names in ``policy_dir``: every ``NAME.yaml`` with a valid NAME, but ``defaults``."""
    if not policy_dir.is_dir():
        return []
    return sorted(p.stem for p in policy_dir.glob("*.yaml")
                  if p.stem != "defaults" and is_env_name(p.stem) and p.is_file())


def misnamed_policy_files(policy_dir: Path) -> list[Path]:
    """``*.yaml`` files whose name can never be an env (``Prod.yaml``, ``my prod.yaml``)."""
    if not policy_dir.is_dir():
        return []
    return sorted(p for p in policy_dir.glob("*.yaml") if not is_env_name(p.stem) and not p.stem.startswith("_"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = read_policy_yaml(path)
    except PolicyYamlError as exc:
        raise PolicyError([str(exc)]) from None
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


def _bad_env(policy_dir: Path, env: str) -> PolicyError:
    allowed = ", ".join(available_envs(policy_dir)) or "(none: the folder has no *.yaml)"
    if not is_env_name(env):
        return PolicyError([clip(
            f"{policy_dir}: env {env!r} is not an env name: an env is exactly the name of a policy file in "
            f"this folder, without .yaml (lower-case letters, digits, '_' and '-'; no paths); allowed: {allowed}")])
    return PolicyError([f"{policy_dir / (env + '.yaml')}: no policy for env {env!r}; allowed: {allowed}"])


def _chain(policy_dir: Path, env: str) -> list[tuple[Path, dict[str, Any]]]:
    if env not in available_envs(policy_dir):
        raise _bad_env(policy_dir, env)
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: set[str] = set()
    name: str | None = env
    while name is not None:
        if name in seen:
            raise PolicyError([f"{policy_dir / (env + '.yaml')}: extends: loops through {name!r}"])
        seen.add(name)
        path = policy_dir / f"{name}.yaml"
        if chain and (not is_env_name(name) or not path.is_file()):
            child = chain[-1][0]
            raise PolicyError([clip(f"{child}: extends: {name!r} must be the name of another policy file in "
                                    f"{policy_dir} (without .yaml, no paths); allowed: "
                                    f"{', '.join(['defaults', *available_envs(policy_dir)])}")])
        data = _read_yaml(path)
        chain.append((path, data))
        parent = data.get("extends")
        if parent is not None and not isinstance(parent, str):
            raise PolicyError([clip(f"{path}: extends: {parent!r} must be the name of another policy file")])
        name = parent
    return list(reversed(chain))


def _origin(chain: Sequence[tuple[Path, Mapping[str, Any]]], loc: tuple[Any, ...]) -> Path:
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


class LocatedProblems(ValueError):
    """Problems a whole-policy check found, each at its own key: (key path, value, what to do)."""

    def __init__(self, problems: list[tuple[tuple[str, ...], Any, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(loc)} = {value!r}: {message}" for loc, value, message in problems))


def _describe(chain: list[tuple[Path, dict[str, Any]]], exc: ValidationError) -> list[str]:
    # One line per distinct mistake: the same problem in 1,000 items of a list is one line that
    # says so, and at most MAX_PROBLEMS lines in all.
    groups: dict[tuple[Any, ...], list[str]] = {}
    for error in exc.errors():
        located = (error.get("ctx") or {}).get("error")
        if isinstance(located, LocatedProblems):  # a whole-policy check: each problem named at its key
            for key, value, text in located.problems:
                groups.setdefault((key, "located", text), []).append(
                    clip(f"{_origin(chain, key)}: {'.'.join(key)} = {clip(repr(value), 120)}: {text}"))
            continue
        loc = tuple(error["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key; check the spelling (llamadeploy policy schema lists every key)"
        elif error["type"] == "missing":
            message = "required key is missing"
        value = error.get("input")
        shown = "" if error["type"] == "missing" or isinstance(value, dict) else f" = {clip(repr(value), 120)}"
        family = (tuple("*" if isinstance(p, int) else p for p in loc), error["type"], clip(message, 80))
        groups.setdefault(family, []).append(clip(f"{_origin(chain, loc)}: {path}{shown}: {message}"))
    problems = [lines[0] + (f" (and {len(lines) - 1} more items like it)" if len(lines) > 1 else "")
                for lines in groups.values()]
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more problems (fix these first)"]
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
    return LoadedPolicy(policy=policy, files=tuple(p for p, _ in chain), document=document,
                        sources=tuple(d for _, d in chain))


def json_schema() -> dict[str, Any]:
    """JSON Schema for editors (one schema for every policy file; all keys optional but where noted)."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llamadeploy policy"
    return schema
