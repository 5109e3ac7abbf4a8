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
        "metrics": bake.get("last_results") or bake.get("results") or [],
        "breach": bake.get("breach"),
        "failed_tests": record.get("details", {}).get("failed_tests", []),
    }


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
    if not alluredir or runner.record is None:
        return
    from .reporting.attach import Attachment
    from .reporting.environment import write_environment
    from .reporting.stage_result import record_stage

    record = runner.record_json()
    status = "passed" if record["status"] == "passed" else "failed"
    attachments = [
        Attachment.yaml("effective policy", yaml.safe_dump(json.loads(json.dumps(dict(runner.loaded.document), default=str)),
                                                             sort_keys=False)),
        Attachment.json("stage decision", _decision(runner)),
        *_plots(runner),
    ]
    deploy_log = runner.run_dir / "deploy.log"
    if deploy_log.is_file():
        attachments.append(Attachment.text("deploy command output", deploy_log.read_text()))
    if runner.rollback_detail:
        attachments.append(Attachment.json("rollback record", runner.rollback_detail))
    bake = runner.context.watch.get("bake", {}) if runner.context else {}
    steps = [dict(s, name=s["name"], parameters={k: str(v) for k, v in s.items() if k in ("after", "reason")})
             for s in runner.steps]
    steps = [{k: v for k, v in s.items() if k in ("name", "status", "start", "stop", "parameters")} for s in steps]
    steps += _poll_steps(bake, bake.get("started_at") or record["started_at"])
    steps.sort(key=lambda s: s.get("start") or 0)
    failure = {"message": record["reason"]} if status != "passed" and record.get("reason") else None
    record_stage(
        alluredir, env=runner.env, stage=runner.stage, release=runner.release or "-", status=status, steps=steps,
        attachments=attachments, failure=failure, started=record["started_at"],
        stopped=record.get("ended_at") or record["started_at"], versions=record.get("new_versions") or {},
    )
    after = record.get("weights_after") or {}
    write_environment(alluredir, {
        "env": runner.env, "stage": runner.stage, "release": runner.release,
        "status": record["status"],
        "versions.old": json.dumps(record.get("old_versions")), "versions.new": json.dumps(record.get("new_versions")),
        "weights": json.dumps(after), "policy.sha256": runner.loaded.sha256,
        "approver": record.get("approver") or "-", "run": runner.run_id,
    })
