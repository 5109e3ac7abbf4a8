"""Rules a prod policy cannot weaken: the runbook's floor, kept in code.

The numbers live in ``policies/prod.yaml`` as data, and anyone can edit that
file. These rules are the second key: a change that quietly loosens prod's
gate fails ``llamadeploy policy check`` in CI, and pytest itself refuses to
run any stage of a guarded env (exit 4) before anything changes, naming each
rule it breaks. Changing a rule here is a code change with its own review.

Every number below cites the line of ``RUNBOOK.md`` (shared/RUNBOOK.md) it
comes from; where the runbook gives no number, the comment says why the bound
is what it is. What holds for every env (finite numbers, sane ranges, known
``deploy.argv`` placeholders, no generic approval variables) is enforced by the
policy models themselves (:mod:`.policy`, :mod:`.units`), not here.

An env that extends prod and acts on AWS (``prod-eu.yaml`` with ``extends: prod``)
moves prod's functions under its own lock and history, so it is guarded like prod
unless its file says ``guarded: false``. The sandbox extends prod but is not
guarded: it rehearses prod's plan with bakes of seconds, a short lease and the
sandbox's endpoints (``aws.endpoint: sandbox``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .policy import LoadedPolicy, MetricRule, Policy, is_generic_env_var
from .units import format_duration

#: Environments the floor applies to, and every env that extends one of them and acts on AWS (:func:`is_guarded`).
GUARDED_ENVS = ("prod",)

# RUNBOOK.md:97-120 "Traffic Shifting Stages": deploy at 0 %, then 10 %, 50 %, 100 %.
PLAN = ["deploy", "shift10", "shift50", "shift100"]


@dataclass(frozen=True)
class StageFloor:
    action: str
    #: Highest share of traffic the stage may move to the new version (None: not a weighted stage).
    max_weight: float | None
    #: Shortest bake, in seconds, and the stage is then watched (None: no bake required).
    min_bake: float | None
    #: Suites the stage must keep running.
    suites: tuple[str, ...]
    #: Where the runbook says so.
    source: str


STAGES = {
    # RUNBOOK.md:101-104: "Deploy Blue Environment (0% traffic)", "Run smoke tests", "Verify health checks".
    "deploy": StageFloor("deploy", 0.0, None, ("health", "functional"), "RUNBOOK.md:101-104"),
    # RUNBOOK.md:106-110: "Shift 10% Traffic", "Monitor for 5 minutes", error rates, latency, auto-rollback.
    "shift10": StageFloor("shift", 0.10, 300.0, ("health", "monitoring"), "RUNBOOK.md:106-110"),
    # RUNBOOK.md:112-115: "Shift 50% Traffic", "Monitor for 5 minutes", "Compare metrics between blue and green".
    "shift50": StageFloor("shift", 0.50, 300.0, ("health", "monitoring", "compare"), "RUNBOOK.md:112-115"),
    # RUNBOOK.md:117-120 "Shift 100%", "Monitor for 10 minutes", "Verify all metrics stable", and the
    # post-deployment verification it implies, RUNBOOK.md:204-242 (health, functional, performance, monitoring).
    "shift100": StageFloor("promote", None, 600.0, ("health", "functional", "performance", "monitoring"),
                           "RUNBOOK.md:117-120, 204-242"),
    # RUNBOOK.md:151-166 "Manual Rollback": "Verify rollback" (health), "Monitor for 10 minutes".
    "rollback": StageFloor("rollback", None, 600.0, ("health",), "RUNBOOK.md:151-166"),
    # RUNBOOK.md:25-33 "Pre-Deployment Checklist".
    "preflight": StageFloor("preflight", None, None, ("checklist",), "RUNBOOK.md:25-33"),
    # The operations keep the check that proves they did what they say.
    # RUNBOOK.md:204-242 "Post-Deployment Verification": health, functional, performance, monitoring.
    "verify": StageFloor("none", None, None, ("health", "functional", "performance", "monitoring"), "RUNBOOK.md:204-242"),
    # RUNBOOK.md:82 "Create backup first", :181 "backup.sh prod --rds".
    "backup": StageFloor("backup", None, None, ("backup",), "RUNBOOK.md:82, 181"),
    # RUNBOOK.md:187-191 "Verify migration", "Test application" (health).
    "migrate": StageFloor("migrate", None, None, ("migration", "health"), "RUNBOOK.md:187-191"),
    # RUNBOOK.md:326-328 "Restore from most recent backup", "Verify data integrity".
    "restore": StageFloor("restore", None, None, ("restore",), "RUNBOOK.md:326-328"),
}
# RUNBOOK.md:120 "Keep green environment for 24 hours (rollback capability)".
MIN_KEEP_PREVIOUS = 86400.0
# RUNBOOK.md:31 "Backup created (production only)" and :82 "Create backup first": the project reads
# this as a backup made within the last day (README "Stages", preflight).
MAX_BACKUP_AGE = 86400.0

# RUNBOOK.md:124-131 "Key Metrics to Watch": signal -> (op family, loosest allowed threshold). Each
# runbook line is kept on the functions' own per-version signal (service.*, EMF) and, where AWS
# measures it, on AWS's metrics as the second line.
KEY_METRICS = {
    "service.error_rate": ("max", 0.01),  # :126 "Lambda error rate (should be <1%)", as users see it
    "lambda.error_rate": ("max", 0.01),  # :126, Lambda's Errors (unhandled failures)
    "service.latency": ("max", 500.0),  # :127 "p95 should be <500ms", per version
    "lambda.duration": ("max", 500.0),  # :127
    "apigw.5xx": ("max", 0.0),  # :128 "API Gateway 5xx errors (should be 0)"
    "service.ws_connect_error_rate": ("max", 0.001),  # :129 "WebSocket connection errors (should be <0.1%)"
    "cache.hit_rate": ("min", 0.80),  # :130 "Redis cache hit rate (should be >80%)"
    "dynamodb.throttles": ("max", 0.0),  # :131 "DynamoDB throttling (should be 0)"
}
# RUNBOOK.md:143-149 "Automatic rollback is triggered when".
ROLLBACK_TRIGGERS = {
    "service.error_rate": ("max", 0.05),  # :146 ">5%", as users see it (5xx per version)
    "lambda.error_rate": ("max", 0.05),  # :146 ">5%", Lambda's Errors
    "lambda.throttle_rate": ("max", 0.001),  # :147 ">0.1%"
    "apigw.5xx": ("max", 10.0),  # :148 ">10 in 5 minutes"
    "service.ws_connect_error_rate": ("max", 0.01),  # :149 ">1%"
}
# RUNBOOK.md:230-235 "Performance Tests": attribute -> (family, loosest).
PERFORMANCE = {"api_p95": ("max", 200.0), "ws_p95": ("max", 100.0), "db_p95": ("max", 50.0), "cache_hit_rate": ("min", 0.80)}
# Signals whose CloudWatch series exist only when something went wrong (AWS.md): "no data" may pass.
NO_DATA_MAY_PASS = ("apigw.5xx", "dynamodb.throttles")

# Approval, RUNBOOK.md:21 "prod ... Yes (manual approval)" and :75 "Approve deployment in GitHub".
# The variable that carries the approver must be one only an approval sets: generic variables are
# refused for every env by the model (policy.GENERIC_ENV_VARS); prod's must also say what it is.
APPROVAL_VARIABLE_MARK = "APPROV"

# The watch: RUNBOOK.md:110 and :115 "Auto-rollback if alarms trigger", :145-149 the triggers.
# The triggers are rates over one minute (and 5xx over five): a poll less often than once a
# minute lets a breach run a whole minute unwatched.
MAX_WATCH_INTERVAL = 60.0
# Each provider error in a row extends the bake by one interval + 30 s of blindness
# (metrics/watch.py); beyond 10 a throttled CloudWatch hides a bad release for minutes.
MAX_PROVIDER_ERROR_LIMIT = 10

# Compare, RUNBOOK.md:114 "Compare metrics between blue and green" (no numbers given there). The
# bounds keep the comparison able to fail:
MAX_ERROR_RATE_DIFF = 0.01  # no more than the key metric's whole error budget, :126 "<1%"
MAX_P95_RATIO = 2.0  # the new version's p95 at most twice the old one's
# The floor under which a slower p95 is noise: at most a fifth of the Lambda p95 budget
# (:127, 500 ms) and no more than the WebSocket budget (:233, 100 ms).
MAX_MIN_P95_DELTA = 100.0
MAX_TOLERANCE = 0.5  # a median 50 % slower is a regression whatever the test says
# Below this significance level a 5-minute bake's few dozen intervals can never reject.
MIN_ALPHA = 0.001

# The ledger. RUNBOOK.md:72-76: prod ships from CI, one job per stage on fresh runners: only
# the DynamoDB ledger is shared between them (a file ledger is a new lock per runner).
LEDGER_BACKEND = "dynamodb"
# The lease must cover the longest step between two renewals: the deploy command
# (deploy.timeout), a backup (backup.timeout), and a bake followed by its suites. The suites'
# allowance is the performance load (performance.duration) plus SUITES_ALLOWANCE for the others
# (health, functional, monitoring: their own deadlines are seconds, their set-up is not).
SUITES_ALLOWANCE = 300.0

# Targets: RUNBOOK.md:204-220 verifies production itself (api.llama.fi, the RDS and Redis endpoints).


@dataclass(frozen=True)
class Violation:
    rule: str
    key: str
    value: object
    allowed: str
    source: str = ""

    def __str__(self) -> str:
        where = f" ({self.source})" if self.source else ""
        return f"{self.key} = {self.value!r}: breaks guard rule {self.rule!r}{where}: {self.allowed}"


def _looser(rule: MetricRule, family: str, floor: float) -> bool:
    """Is ``rule`` looser than "value <= floor" (max) or "value >= floor" (min)?"""
    if family == "max":
        if rule.op not in ("<", "<=", "=="):
            return True
        return not rule.threshold <= floor  # written so that a NaN is looser
    if rule.op not in (">", ">="):
        return True
    return not rule.threshold >= floor


def _stages(policy: Policy) -> list[Violation]:
    out: list[Violation] = []
    for name, floor in STAGES.items():
        stage = policy.stages.get(name)
        if stage is None:
            out.append(Violation(f"prod keeps the {name} stage", f"stages.{name}", None, f"a stage with action "
                                 f"{floor.action}", floor.source))
            continue
        key = f"stages.{name}"
        if stage.action != floor.action:
            out.append(Violation(f"{name} is a {floor.action}", f"{key}.action", stage.action,
                                 f"must be {floor.action}", floor.source))
        if floor.max_weight is not None:
            weight = stage.weight or 0.0
            if not weight <= floor.max_weight:
                out.append(Violation(f"{name} moves at most {floor.max_weight:.0%}", f"{key}.weight", stage.weight,
                                     f"<= {floor.max_weight:.0%}", floor.source))
        if floor.min_bake is not None:
            if not stage.bake >= floor.min_bake:
                out.append(Violation(f"{name} bakes at least {floor.min_bake:g}s", f"{key}.bake",
                                     format_duration(stage.bake), f">= {format_duration(floor.min_bake)}", floor.source))
            if not stage.watch:
                out.append(Violation(f"{name} is watched", f"{key}.watch", False, "must be true", floor.source))
        missing = [s for s in floor.suites if s not in stage.suites]
        if missing:
            out.append(Violation(f"{name} runs the runbook's suites", f"{key}.suites", stage.suites,
                                 f"must include {', '.join(floor.suites)} (missing {', '.join(missing)})", floor.source))
    promote = policy.stages.get("shift100")
    if promote is not None and not (promote.keep_previous or 0) >= MIN_KEEP_PREVIOUS:
        out.append(Violation("the previous version is kept 24h", "stages.shift100.keep_previous",
                             promote.keep_previous, ">= 24h", "RUNBOOK.md:120"))
    return out


def _approval(policy: Policy) -> list[Violation]:
    out: list[Violation] = []
    source = "RUNBOOK.md:21, 75"
    if not policy.approval.required:
        out.append(Violation("prod requires approval", "approval.required", False, "must be true", source))
    for i, name in enumerate(policy.approval.env_vars):
        if is_generic_env_var(name):
            out.append(Violation("the approver comes from an approval", f"approval.env_vars.{i}", name,
                                 "not a variable every shell or CI job sets (HOME, USER, CI, GITHUB_*, ...)", source))
        elif APPROVAL_VARIABLE_MARK not in name.upper():
            out.append(Violation("the approver comes from an approval", f"approval.env_vars.{i}", name,
                                 f"a variable named for the approval (containing {APPROVAL_VARIABLE_MARK}), "
                                 "e.g. LLAMADEPLOY_APPROVED_BY", source))
    return out


# ``watch.on_inconclusive: pause`` is allowed in prod: a paused stage neither passes nor moves traffic
# further until a human's decision is recorded (judgement.py), and a rollback job still decides it.
# ``observe: true`` is checked with the thresholds (_thresholds): a runbook rule must keep acting.


def _watch_and_compare(policy: Policy) -> list[Violation]:
    out: list[Violation] = []
    w, c = policy.watch, policy.compare
    source = "RUNBOOK.md:110, 115, 145-149"
    if not w.probe_rate > 0:
        out.append(Violation("prod probes the new version during a bake", "watch.probe_rate", w.probe_rate,
                             "> 0 (probes are the trigger source that does not wait for CloudWatch)", source))
    if not w.interval <= MAX_WATCH_INTERVAL:
        out.append(Violation("the watch polls every minute at least", "watch.interval", format_duration(w.interval),
                             f"<= {format_duration(MAX_WATCH_INTERVAL)}", source))
    if not w.provider_error_limit <= MAX_PROVIDER_ERROR_LIMIT:
        out.append(Violation("provider errors end the bake soon", "watch.provider_error_limit", w.provider_error_limit,
                             f"<= {MAX_PROVIDER_ERROR_LIMIT}", source))
    source = "RUNBOOK.md:114"
    for attr, bound, shown in (("max_error_rate_diff", MAX_ERROR_RATE_DIFF, "<= 1%"),
                               ("max_p95_ratio", MAX_P95_RATIO, f"<= {MAX_P95_RATIO:g}"),
                               ("min_p95_delta", MAX_MIN_P95_DELTA, f"<= {MAX_MIN_P95_DELTA:g} ms"),
                               ("tolerance", MAX_TOLERANCE, f"<= {MAX_TOLERANCE:g}")):
        value = getattr(c, attr)
        if not value <= bound:
            out.append(Violation("compare can fail a slower or failing new version", f"compare.{attr}", value, shown, source))
    if not MIN_ALPHA <= c.alpha < 1:
        out.append(Violation("compare's rank test can reject", "compare.alpha", c.alpha, f"in [{MIN_ALPHA:g}, 1)", source))
    return out


def longest_step(policy: Policy) -> tuple[float, str]:
    """The longest step the env lock's lease must cover between two renewals, and what it is."""
    bake, stage = max(((s.bake, n) for n, s in policy.stages.items()), default=(0.0, ""))
    steps = [(policy.deploy.timeout, "deploy.timeout"), (policy.backup.timeout, "backup.timeout"),
             (bake + policy.performance.duration + SUITES_ALLOWANCE,
              f"stages.{stage}.bake {format_duration(bake)} + performance.duration "
              f"{format_duration(policy.performance.duration)} + {format_duration(SUITES_ALLOWANCE)} for the other suites")]
    return max(steps)


def _ledger_and_targets(policy: Policy) -> list[Violation]:
    out: list[Violation] = []
    if policy.ledger.backend != LEDGER_BACKEND:
        out.append(Violation("prod's lock and history are shared by every CI job", "ledger.backend",
                             policy.ledger.backend, f"must be {LEDGER_BACKEND}", "RUNBOOK.md:72-76"))
    need, what = longest_step(policy)
    if not policy.ledger.lease >= need:
        out.append(Violation("the lease covers the longest step", "ledger.lease", format_duration(policy.ledger.lease),
                             f">= {format_duration(need)} ({what}): a lease that lapses mid-step lets another run take the "
                             "lock while this one still acts"))
    if policy.aws.endpoint:
        out.append(Violation("prod's gate acts on AWS", "aws.endpoint", policy.aws.endpoint, "must be empty "
                             "(boto3's standard configuration)", "RUNBOOK.md:204-220"))
    if policy.targets.source != "env":
        out.append(Violation("prod's gates probe production", "targets.source", policy.targets.source, "must be env",
                             "RUNBOOK.md:204-220"))
    if not policy.preflight.backup_max_age <= MAX_BACKUP_AGE:
        out.append(Violation("prod deploys after a fresh backup", "preflight.backup_max_age",
                             format_duration(policy.preflight.backup_max_age), "<= 24h", "RUNBOOK.md:31, 82"))
    return out


def _thresholds(policy: Policy) -> list[Violation]:
    out: list[Violation] = []
    for section, floors, source in (("key_metrics", KEY_METRICS, "RUNBOOK.md:124-131"),
                                    ("rollback_triggers", ROLLBACK_TRIGGERS, "RUNBOOK.md:143-149")):
        rules: dict[str, MetricRule] = getattr(policy, section)
        for signal, (family, floor) in floors.items():
            matching = [(n, r) for n, r in rules.items() if r.signal == signal]
            if not matching:
                out.append(Violation(f"{section} keep {signal}", section, sorted(rules), f"a rule on signal {signal}", source))
            # An observe-only rule never acts (Argo's dryRun): it may sit beside the rule that enforces the
            # runbook (to tune a stricter one), never instead of it, and its own numbers are not checked.
            enforcing = [(n, r) for n, r in matching if not r.observe]
            if matching and not enforcing:
                out += [Violation(f"{section}.{signal} acts on a breach", f"{section}.{n}.observe", True,
                                  f"must be false: the runbook requires this rule to act (roll back, fail the stage); "
                                  f"to observe a new threshold, add a second rule on {signal} with observe: true",
                                  source) for n, _ in matching]
            for n, r in enforcing:
                if _looser(r, family, floor):
                    bound = f"{'<=' if family == 'max' else '>='} {floor:g}"
                    out.append(Violation(f"{section}.{signal} no looser than the runbook", f"{section}.{n}",
                                         f"{r.op} {r.threshold:g}", f"threshold {bound}", source))
                if r.no_data == "pass" and signal not in NO_DATA_MAY_PASS:
                    out.append(Violation(f"{section}.{signal} never passes on missing data", f"{section}.{n}.no_data",
                                         "pass", "wait or fail", source))
    out += _min_samples(policy)
    for attr, (family, floor) in PERFORMANCE.items():
        value = getattr(policy.performance, attr)
        if (family == "max" and not value <= floor) or (family == "min" and not value >= floor):
            out.append(Violation(f"performance.{attr} no looser than the runbook", f"performance.{attr}", value,
                                 f"{'<=' if family == 'max' else '>='} {floor:g}", "RUNBOOK.md:230-235"))
    return out


def _min_samples(policy: Policy) -> list[Violation]:
    """A rule whose signal rests on traffic (requests, connects, lookups) must see some: with
    ``min_samples: 0`` a window without a single request reads as healthy."""
    from .metrics.signals import catalog

    signals = catalog(policy)  # the policy's custom signals too
    out: list[Violation] = []
    for section in ("key_metrics", "rollback_triggers"):
        rules: dict[str, MetricRule] = getattr(policy, section)
        for n, r in rules.items():
            signal = signals.get(r.signal)
            if signal is not None and signal.samples and r.min_samples < 1:
                out.append(Violation(f"{section}.{r.signal} is judged on traffic", f"{section}.{n}.min_samples",
                                     r.min_samples, f">= 1 ({signal.samples_noun}; a window without any must not "
                                     "read as healthy)", "RUNBOOK.md:124-149"))
    return out


def _non_finite(data: Any, key: str = "") -> list[Violation]:
    """Belt and braces over the models (which refuse NaN/inf for every env): a policy built in code
    with ``model_copy`` skips validation, and a NaN anywhere makes a comparison that never fails."""
    if isinstance(data, float) and not math.isfinite(data):
        return [Violation("every number is finite", key or "(top level)", data, "a finite number")]
    if isinstance(data, BaseModel):
        return [v for k in type(data).model_fields for v in _non_finite(getattr(data, k), f"{key}.{k}" if key else k)]
    if isinstance(data, dict):
        return [v for k, item in data.items() for v in _non_finite(item, f"{key}.{k}" if key else str(k))]
    if isinstance(data, (list, tuple)):
        return [v for i, item in enumerate(data) for v in _non_finite(item, f"{key}.{i}")]
    return []


def is_guarded(loaded: LoadedPolicy) -> bool:
    """prod; an env that says ``guarded: true``; an env that extends prod and acts on AWS, unless it says ``false``.

    Before, only the name counted: ``prod-eu.yaml`` (``extends: prod``) with a deploy at 100 % and a
    file ledger passed `policy check` and ran on prod's functions.
    """
    policy = loaded.policy
    if policy.name in GUARDED_ENVS:
        return True
    # Said by this env or a parent of it below prod, never by prod.yaml (check_guard refuses it there).
    if policy.guarded is not None and loaded.origin("guarded").stem not in GUARDED_ENVS:
        return policy.guarded
    return policy.aws.endpoint != "sandbox" and any(f.stem in GUARDED_ENVS for f in loaded.files[:-1])


def check_guard(policy: Policy, *, guarded: bool | None = None) -> list[Violation]:
    """Every way ``policy`` is looser than the runbook (empty for envs that are not guarded).

    ``guarded``: :func:`is_guarded` of its loaded files; when None, by the env's name alone.
    """
    if not (policy.name in GUARDED_ENVS if guarded is None else guarded):
        return []
    out: list[Violation] = _non_finite(policy)
    if policy.name in GUARDED_ENVS and policy.guarded is False:
        # Every env extending prod would inherit it: the switch is each env's own, never prod's.
        out.append(Violation("prod's guard cannot be switched off", "guarded", False, "unset (or true)"))
    out += _approval(policy)
    if not policy.rollback_on_failure:
        out.append(Violation("prod rolls back on failure", "rollback_on_failure", False, "must be true",
                             "RUNBOOK.md:110, 115, 143"))
    if policy.plan != PLAN:
        out.append(Violation("prod ships blue/green in the runbook's stages", "plan", policy.plan, f"must be {PLAN}",
                             "RUNBOOK.md:97-120"))
    out += _stages(policy)
    out += _watch_and_compare(policy)
    out += _ledger_and_targets(policy)
    out += _thresholds(policy)
    return out


def guard_problems(loaded: LoadedPolicy) -> list[str]:
    """The violations of ``loaded``, each prefixed with the file that sets the key (where to fix it)."""
    return [f"{loaded.origin(v.key)}: {v}" for v in check_guard(loaded.policy, guarded=is_guarded(loaded))]
