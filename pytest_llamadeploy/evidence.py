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


def _plots(runner: Any) -> list[Any]:
    """PNG per plotted metric, per version, with the threshold drawn."""
    from .reporting.attach import Attachment
    from .reporting.plots import plot_series

    bake = runner.context.watch.get("bake", {}) if runner.context else {}
    out = []
    for name, spec in (bake.get("plots") or {}).items():
        series = {label: [tuple(p) for p in points] for label, points in spec.get("series", {}).items()}
        if not any(series.values()):
            continue
        try:
            png = plot_series(series, float(spec["threshold"]), spec.get("title", name), spec.get("unit", ""))
        except Exception as exc:  # a plot must never cost the verdict
            runner.out(f"llamadeploy: plot {name} skipped: {exc}")
            continue
        out.append(Attachment.png(spec.get("title", name), png))
    return out


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
    for poll in (bake.get("poll_summaries") or [])[:200]:
        steps.append({"name": poll.get("summary", "poll"), "status": poll.get("status", "passed"),
                      "start": poll.get("t", record["started_at"]), "stop": poll.get("t", record["started_at"])})
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
