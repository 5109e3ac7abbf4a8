"""The decision ``--plan`` prints: readable by the person who approves the stage."""

from __future__ import annotations

from .policy import LoadedPolicy, MetricRule
from .stage import Decision
from .units import format_duration


def _rule(name: str, rule: MetricRule) -> str:
    if _is_rate(rule):
        threshold = f"{rule.threshold * 100:g}%"
    elif rule.signal.endswith("duration") or rule.statistic.startswith("p"):
        threshold = f"{rule.threshold:g} ms"
    else:
        threshold = f"{rule.threshold:g}"
    scope = "per version" if rule.per_version else "service-wide"
    return (f"    {name:<24} {rule.signal:<22} {rule.statistic:<5} {rule.op} {threshold:<10} "
            f"window {format_duration(rule.window):<4} min {rule.min_samples:<4} no data: {rule.no_data:<4} ({scope})"
            + (" OBSERVED ONLY (observe: true)" if rule.observe else ""))


def _is_rate(rule: MetricRule) -> bool:
    return rule.signal.endswith("rate")


def render_plan(decision: Decision, loaded: LoadedPolicy, ledger_desc: str, *, observe: bool = False) -> str:
    p, sp = loaded.policy, decision.stage_policy
    lines = [
        f"llamadeploy plan: {decision.stage} of release {decision.release or '(none)'} in {decision.env}",
        f"  policy: {', '.join(str(f) for f in loaded.files)} (sha256 {loaded.short_hash})",
        f"  action: {sp.action}" + (f" to {sp.weight:.0%}" if sp.weight is not None else "")
        + (f"; bake {format_duration(sp.bake)}" if sp.bake else "; no bake")
        + ("; watch on (rollback triggers + probes)" if sp.watch else "")
        + (f"; keep previous {format_duration(sp.keep_previous)}" if sp.keep_previous else ""),
        f"  plan of {decision.env}: {' -> '.join(s + (' <' if s == decision.stage else '') for s in p.plan)}",
        f"  ledger: {ledger_desc}",
        f"  functions (alias {p.service.alias!r}):",
    ]
    for fn, cur in decision.current.items():
        tgt = decision.target.get(fn) if decision.target else None
        if sp.action == "deploy" and tgt is None:
            after = "unchanged; the deploy command publishes the new version at 0%"
        elif tgt is None:
            after = "unchanged"
        else:
            after = tgt.describe()
        lines.append(f"    {fn:<14} now: {cur.describe():<28} after: {after}")
    if decision.old_versions or decision.new_versions:
        lines.append(f"  versions: old {decision.old_versions or '-'}  new {decision.new_versions or '(published by deploy)'}")
    lines.append(f"  suites: {', '.join(sp.suites) or '(none)'}")
    if sp.watch:
        lines.append(f"  rollback triggers (checked every {format_duration(p.watch.interval)}, "
                     f"probes {p.watch.probe_rate:g}/s on {p.watch.probe_path}):")
        lines += [_rule(n, r) for n, r in p.rollback_triggers.items()]
    if "monitoring" in sp.suites:
        lines.append("  key metrics (monitoring suite, end of bake):")
        lines += [_rule(n, r) for n, r in p.key_metrics.items()]
    if "performance" in sp.suites:
        perf = p.performance
        lines.append(f"  performance: {perf.users} users for {format_duration(perf.duration)}: API p95 < {perf.api_p95:g} ms, "
                     f"WebSocket p95 < {perf.ws_p95:g} ms, DB p95 < {perf.db_p95:g} ms, cache hit rate > {perf.cache_hit_rate:.0%}, "
                     f"failures <= {perf.max_failure_ratio:.1%}")
    if "compare" in sp.suites:
        c = p.compare
        lines.append(f"  compare: error rate diff <= {c.max_error_rate_diff:.1%}, p95 ratio <= {c.max_p95_ratio:g}, "
                     f"Mann-Whitney alpha {c.alpha:g} with tolerance {c.tolerance:.0%}, min samples {c.min_samples}")
    lines.append(f"  on failure: {'roll back to the old version' if p.rollback_on_failure else 'leave traffic as it is (rollback_on_failure: false)'}")
    if sp.watch and p.watch.on_inconclusive == "pause":
        lines.append("  on an inconclusive watch: PAUSE (exit 6), traffic left as it is, until `llamadeploy decide`")
    if observe:
        lines.append("  --observe: every breach of the watch, key metrics and compare is reported and NEVER acted on "
                     "(no rollback; the stage does not fail on it)")
    lines.append(f"  approval: {'required; ' if p.approval.required else 'not required; '}"
                 f"{'approved by ' + decision.approver if decision.approver else 'no approver given'}")
    lines.append("  preconditions:")
    for pre in decision.preconditions:
        lines.append(f"    [{'ok' if pre.ok else 'NO'}] {pre.name}: {pre.detail}")
    lines.append("  verdict: " + ("would run" if decision.ok else "would be REFUSED (nothing would change)"))
    lines.append("  (--plan changed nothing: no AWS write, no ledger record)")
    return "\n".join(lines)
