"""The stage's evidence for reviewers: the Allure stage verdict and environment metadata.

Called once per stage on the controller, after the verdict. Everything written
passes through the reporting package's redaction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def _decision(runner: Any) -> dict[str, Any]:
    """Each metric the stage judged: value, threshold, window, version, verdict."""
    bake = runner.context.watch.get("bake", {}) if runner.context else {}
    record = runner.record_json()
    return {
        "env": runner.env,
        "stage": runner.stage,
        "release": runner.release,
        "status": record.get("status"),
        "reason": record.get("reason"),
        "approver": record.get("approver"),
        "policy_sha256": runner.loaded.sha256,
        "versions": {"old": record.get("old_versions"), "new": record.get("new_versions")},
        "weights_before": record.get("weights_before"),
        "weights_after": record.get("weights_after"),
        "preconditions": [p.__dict__ for p in runner.decision.preconditions] if runner.decision else [],
        "metrics": [_metric_row(r) for r in bake.get("last_results") or bake.get("results") or []],
        "breach": bake.get("breach"),
        "watch": {k: bake.get(k) for k in ("poll_count", "get_metric_data_calls", "provider_errors", "probes")
                  if k in bake},
        "failed_tests": record.get("details", {}).get("failed_tests", []),
        # Observed only (--observe, a rule's observe: true), a pause awaiting a decision, the decision taken.
        "observed": record.get("details", {}).get("observed"),
        "awaiting": record.get("details", {}).get("awaiting"),
        "decision": record.get("details", {}).get("decision"),
    }


def _metric_row(result: dict[str, Any]) -> dict[str, Any]:
    """A watch RuleResult as the reviewer reads it: metric, value, threshold, window, version, verdict first."""
    from .units import format_duration

    label, number = result.get("version", ""), result.get("version_number", "")
    window = result.get("window")
    return {
        "metric": result.get("rule"),
        "function": result.get("function"),
        "version": f"{label} v{number}" if number else label,
        "value": result.get("value"),
        "op": result.get("op"),
        "threshold": result.get("threshold"),
        "window": format_duration(round(window)) if isinstance(window, int | float) else window,
        "samples": result.get("samples"),
        "verdict": result.get("verdict"),
        "signal": result.get("signal"),
        "message": result.get("message"),
    }


def _describe_alias(after: dict[str, Any]) -> str:
    """``{"onchain-api": {"version": "1", "weights": {"2": 0.1}}}`` -> ``onchain-api v1 + v2 10%``."""
    parts = []
    for fn, state in sorted(after.items()):
        if not isinstance(state, dict):
            parts.append(f"{fn} {state}")
            continue
        weights = "".join(f" + v{v} {float(w):.0%}" for v, w in (state.get("weights") or {}).items())
        parts.append(f"{fn} v{state.get('version')}{weights}")
    return ", ".join(parts)


def _steps(runner: Any, attachments: dict[str, Any]) -> list[dict[str, Any]]:
    """The runner's actions as Allure steps, with their evidence attached where it belongs."""
    alias = runner.policy.service.alias
    steps = []
    for raw in runner.steps:
        step: dict[str, Any] = {k: raw[k] for k in ("name", "status", "start", "stop") if k in raw}
        params: dict[str, str] = {}
        if raw.get("after"):
            params["alias after"] = _describe_alias(raw["after"])
        if raw["name"].startswith("rollback to"):
            detail = runner.rollback_detail or {}
            if detail.get("after"):
                step["name"] = f"rollback: alias {alias} back to {_describe_alias(detail['after'])}"
            if raw.get("reason"):
                params["reason"] = str(raw["reason"])
            if "rollback record" in attachments:
                step["attachments"] = [attachments["rollback record"]]
        elif raw["name"].startswith("deploy command") and "deploy command output" in attachments:
            step["attachments"] = [attachments["deploy command output"]]
        if params:
            step["parameters"] = params
        steps.append(step)
    return steps


def _known_secrets(runner: Any) -> list[str]:
    """Passwords of the DSNs/URLs the stage probed (from CI's secret store on AWS): masked wherever they appear.

    Whole and in the pieces a driver's error may quote (a password with an unencoded '/' or '@').
    """
    from .redact import url_passwords

    return [p for value in (getattr(runner, "targets", None) or {}).values() for p in url_passwords(str(value))]


def _rate_points(entry: dict[str, Any]) -> list[tuple[float, float]]:
    inv = {t: v for t, v in entry.get("invocations", [])}
    return [(t, e / inv[t]) for t, e in entry.get("errors", []) if inv.get(t)]


def _plots(runner: Any) -> list[Any]:
    """Per function: error rate and p95 per version over the bake, the threshold drawn."""
    from .reporting.attach import Attachment
    from .reporting.plots import plot_series

    bake = runner.context.watch.get("bake", {}) if runner.context else {}
    series = bake.get("series") or {}
    policy = runner.policy
    error_rule = next((r for r in policy.rollback_triggers.values() if r.signal == "lambda.error_rate"), None)
    p95_rule = next((r for r in policy.key_metrics.values() if r.signal == "lambda.duration"), None)
    out = []
    for fn in policy.service.functions:
        by_version = {f"{label} v{fns[fn]['version']}": fns[fn] for label, fns in series.items() if fn in fns}
        specs = []
        if error_rule is not None:
            specs.append((f"{fn} error rate by version", {k: _rate_points(e) for k, e in by_version.items()},
                          error_rule.threshold, "share"))
        if p95_rule is not None:
            specs.append((f"{fn} p95 duration by version", {k: [tuple(p) for p in e.get("p95_ms", [])]
                                                           for k, e in by_version.items()}, p95_rule.threshold, "ms"))
        for title, data, threshold, unit in specs:
            if not any(data.values()):
                continue
            try:
                out.append(Attachment.png(title, plot_series(data, float(threshold), title, unit)))
            except Exception as exc:  # a plot must never cost the verdict
                runner.out(f"llamadeploy: plot {title!r} skipped: {exc}")
    return out


def _poll_steps(bake: dict[str, Any], started: float) -> list[dict[str, Any]]:
    """One step per poll: the worst verdict and the values of the new version."""
    steps = []
    for poll in (bake.get("polls") or [])[-300:]:
        values = poll.get("values", {})
        verdicts = [v.get("verdict") for v in values.values()]
        worst = next((w for w in ("fail", "inconclusive", "no_data") if w in verdicts), "pass")
        shown = ", ".join(f"{k.split('|')[0]} {v['value']:.3g}" for k, v in values.items()
                          if "|new|" in k and isinstance(v.get("value"), (int, float)))[:300]
        t = poll.get("t", started)
        steps.append({"name": f"poll +{t - started:.0f}s: {worst}" + (f" (new: {shown})" if shown else ""),
                      "status": "passed" if worst in ("pass", "no_data") else "failed", "start": t, "stop": t})
    return steps


def write_stage_result(runner: Any, alluredir: str | Path | None) -> None:
    if not alluredir:
        return
    from .reporting.scrub import scrub_results

    secrets = _known_secrets(runner)
    if runner.record is not None:
        # allure-pytest wrote the gate tests' results (traces print fixture arguments) without our redaction
        scrub_results(alluredir, since=float(runner.record_json().get("started_at") or 0) - 5, secrets=secrets)
    if runner.record is None:
        return
    from .reporting.attach import Attachment
    from .reporting.environment import write_environment
    from .reporting.stage_result import record_stage

    record = runner.record_json()
    # A pause is neither a pass nor a failure: shown as skipped, its reason naming the decide command.
    status = {"passed": "passed", "paused": "skipped"}.get(record["status"], "failed")
    named: dict[str, Any] = {}
    deploy_log = runner.run_dir / "deploy.log"
    if deploy_log.is_file():
        named["deploy command output"] = Attachment.text("deploy command output", deploy_log.read_text(),
                                                         secrets=secrets)
    if runner.rollback_detail:
        named["rollback record"] = Attachment.json("rollback record", runner.rollback_detail, secrets=secrets)
    attachments = [
        Attachment.yaml("effective policy", yaml.safe_dump(json.loads(json.dumps(dict(runner.loaded.document), default=str)),
                                                             sort_keys=False), secrets=secrets),
        Attachment.json("stage decision", _decision(runner), secrets=secrets),
        *_plots(runner),
        *named.values(),
    ]
    bake = runner.context.watch.get("bake", {}) if runner.context else {}
    steps = _steps(runner, named)
    steps += _poll_steps(bake, bake.get("started_at") or record["started_at"])
    at = record.get("ended_at") or record["started_at"]
    # Each breach observed only is a failed step of a stage that did not act on it: seen, never hidden.
    steps += [{"name": f"OBSERVED ONLY, not acted on: {text}", "status": "failed", "start": at, "stop": at}
              for text in ((record.get("details") or {}).get("observed") or {}).get("breaches") or []]
    steps.sort(key=lambda s: s.get("start") or 0)
    failure = {"message": record["reason"]} if status != "passed" and record.get("reason") else None
    record_stage(
        alluredir, env=runner.env, stage=runner.stage, release=runner.release or "-", status=status, steps=steps,
        attachments=attachments, failure=failure, started=record["started_at"],
        stopped=record.get("ended_at") or record["started_at"], versions=record.get("new_versions") or {},
        secrets=secrets,
    )
    after = record.get("weights_after") or {}
    write_environment(alluredir, {
        "env": runner.env, "stage": runner.stage, "release": runner.release,
        "status": record["status"],
        "versions.old": json.dumps(record.get("old_versions")), "versions.new": json.dumps(record.get("new_versions")),
        "weights": _describe_alias(after) if after else "-", "policy.sha256": runner.loaded.sha256,
        "approver": record.get("approver") or "-", "run": runner.run_id,
    }, secrets=secrets)
