"""Rules a prod policy cannot weaken: the runbook's floor, kept in code.

The numbers live in ``policies/prod.yaml`` as data, and anyone can edit that
file. These rules are the second key: a change that quietly loosens prod's
gate (shorter bakes, looser thresholds, no approval, no rollback) fails
``llamadeploy policy check`` in CI, naming the rule it breaks. Changing a
rule here is a code change with its own review.
"""

from __future__ import annotations

from dataclasses import dataclass

from .policy import MetricRule, Policy

#: Environments the floor applies to.
GUARDED_ENVS = ("prod",)

# From RUNBOOK.md, "Traffic Shifting Stages".
MIN_BAKE = {"shift10": 300.0, "shift50": 300.0, "shift100": 600.0}
MIN_KEEP_PREVIOUS = 86400.0
PLAN = ["deploy", "shift10", "shift50", "shift100"]
WEIGHTS = {"shift10": 0.10, "shift50": 0.50}

# "Key Metrics to Watch": signal -> (op family, loosest allowed threshold). Each runbook line is
# kept on the functions' own per-version signal (service.*) and on AWS's metrics (second line).
KEY_METRICS = {
    "service.error_rate": ("max", 0.01),
    "lambda.error_rate": ("max", 0.01),
    "service.latency": ("max", 500.0),
    "lambda.duration": ("max", 500.0),
    "apigw.5xx": ("max", 0.0),
    "service.ws_connect_error_rate": ("max", 0.001),
    "cache.hit_rate": ("min", 0.80),
    "dynamodb.throttles": ("max", 0.0),
}
# "Automatic rollback is triggered when".
ROLLBACK_TRIGGERS = {
    "service.error_rate": ("max", 0.05),
    "lambda.error_rate": ("max", 0.05),
    "lambda.throttle_rate": ("max", 0.001),
    "apigw.5xx": ("max", 10.0),
    "service.ws_connect_error_rate": ("max", 0.01),
}
# "Performance Tests": attribute -> (family, loosest).
PERFORMANCE = {"api_p95": ("max", 200.0), "ws_p95": ("max", 100.0), "db_p95": ("max", 50.0), "cache_hit_rate": ("min", 0.80)}


@dataclass(frozen=True)
class Violation:
    rule: str
    key: str
    value: object
    allowed: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}: breaks guard rule {self.rule!r}: {self.allowed}"


def _looser(rule: MetricRule, family: str, floor: float) -> bool:
    """Is ``rule`` looser than "value <= floor" (max) or "value >= floor" (min)?"""
    if family == "max":
        if rule.op not in ("<", "<=", "=="):
            return True
        return rule.threshold > floor or (rule.op == "<=" and rule.threshold > floor)
    if rule.op not in (">", ">="):
        return True
    return rule.threshold < floor


def check_guard(policy: Policy) -> list[Violation]:
    if policy.name not in GUARDED_ENVS:
        return []
    out: list[Violation] = []
    if not policy.approval.required:
        out.append(Violation("prod requires approval", "approval.required", False, "must be true"))
    if not policy.rollback_on_failure:
        out.append(Violation("prod rolls back on failure", "rollback_on_failure", False, "must be true"))
    if policy.plan != PLAN:
        out.append(Violation("prod ships blue/green in the runbook's stages", "plan", policy.plan, f"must be {PLAN}"))
    for name, floor in MIN_BAKE.items():
        stage = policy.stages.get(name)
        if stage is None:
            continue
        if stage.bake < floor:
            out.append(Violation(f"{name} bakes at least {floor:g}s", f"stages.{name}.bake", stage.bake, f">= {floor:g}s"))
        if not stage.watch:
            out.append(Violation(f"{name} is watched", f"stages.{name}.watch", False, "must be true"))
    for name, weight in WEIGHTS.items():
        stage = policy.stages.get(name)
        if stage is not None and stage.weight is not None and stage.weight > weight:
            out.append(Violation(f"{name} moves at most {weight:.0%}", f"stages.{name}.weight", stage.weight, f"<= {weight}"))
    promote = policy.stages.get("shift100")
    if promote is not None and (promote.keep_previous or 0) < MIN_KEEP_PREVIOUS:
        out.append(Violation("the previous version is kept 24h", "stages.shift100.keep_previous", promote.keep_previous, ">= 24h"))
    for section, floors in (("key_metrics", KEY_METRICS), ("rollback_triggers", ROLLBACK_TRIGGERS)):
        rules: dict[str, MetricRule] = getattr(policy, section)
        for signal, (family, floor) in floors.items():
            matching = [(n, r) for n, r in rules.items() if r.signal == signal]
            if not matching:
                out.append(Violation(f"{section} keep {signal}", section, sorted(rules), f"a rule on signal {signal}"))
            for n, r in matching:
                if _looser(r, family, floor):
                    bound = f"{'<=' if family == 'max' else '>='} {floor:g}"
                    out.append(Violation(f"{section}.{signal} no looser than the runbook", f"{section}.{n}",
                                         f"{r.op} {r.threshold:g}", f"threshold {bound}"))
                if r.no_data == "pass" and signal not in ("apigw.5xx", "dynamodb.throttles"):
                    out.append(Violation(f"{section}.{signal} never passes on missing data", f"{section}.{n}.no_data",
                                         "pass", "wait or fail"))
    for attr, (family, floor) in PERFORMANCE.items():
        value = getattr(policy.performance, attr)
        if (family == "max" and value > floor) or (family == "min" and value < floor):
            out.append(Violation(f"performance.{attr} no looser than the runbook", f"performance.{attr}", value,
                                 f"{'<=' if family == 'max' else '>='} {floor:g}"))
    return out
