"""The stage verdict as a synthetic Allure test result: what a reviewer opens first.

A stage's action (deploy, shifts, polls, rollback) happens in the controller
outside any pytest test, so allure-pytest has nothing to hang it on. We write an
Allure result file ourselves (the documented ``*-result.json`` format that
allure-pytest writes, read by Allure 2 and 3 alike) with the actions as steps.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest_llamadeploy.redact import redact
from pytest_llamadeploy.reporting.attach import _TEXT_TYPES, Attachment
from pytest_llamadeploy.reporting.categories import THRESHOLD_BREACHED, classify, threshold_message
from pytest_llamadeploy.reporting.labels import format_versions

STATUSES = ("passed", "failed", "broken", "skipped")
_STEP_KEYS = {"name", "status", "start", "stop", "message", "parameters", "attachments", "steps"}
_FAILURE_KEYS = {"message", "prefix", "metric", "value", "threshold", "op", "window", "version", "unit", "trace"}
VERDICT = "stage verdict"


def stage_title(*, env: str, stage: str, release: str) -> str:
    return f"[{env}] {stage} {release}: {VERDICT}"


def failure_text(failure: Mapping[str, Any]) -> str:
    """The statusDetails message: the core's own message, or one built from metric/value/threshold."""
    unknown = set(failure) - _FAILURE_KEYS
    if unknown:
        raise ValueError(f"record_stage failure: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FAILURE_KEYS)}")
    if failure.get("message"):
        return str(failure["message"])
    if "metric" not in failure:
        raise ValueError("record_stage failure: give 'message', or 'metric' with 'value' and 'threshold'")
    return threshold_message(
        metric=str(failure["metric"]), value=failure.get("value"), threshold=failure.get("threshold"),
        op=str(failure.get("op", ">")), window=str(failure.get("window", "")),
        version=str(failure.get("version", "")), unit=str(failure.get("unit", "")),
        prefix=str(failure.get("prefix", THRESHOLD_BREACHED)),
    )


def _ms(value: float | int | datetime | None, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, int | float):
        return int(value * 1000)  # epoch seconds, as time.time() gives
    raise ValueError(f"time {value!r}: give epoch seconds (time.time()) or a datetime")


def _status(value: object, where: str) -> str:
    status = str(value)
    if status not in STATUSES:
        raise ValueError(f"{where}: status {value!r} is not one of {STATUSES}")
    return status


class _Writer:
    def __init__(self, results_dir: Path, secrets: Sequence[str]) -> None:
        self.results_dir = results_dir
        self.secrets = secrets

    def text(self, text: object) -> str:
        return redact(str(text), self.secrets)

    def attachment(self, item: Attachment) -> dict[str, str]:
        if not isinstance(item, Attachment):
            raise TypeError(f"attachment {item!r}: build it with reporting.Attachment (text/json/yaml/png/file)")
        if item.mime in _TEXT_TYPES:
            # the core redacts already; a second pass costs little and guards every path
            item = Attachment(item.name, redact(item.body.decode("utf-8", "replace"), self.secrets).encode(), item.mime)
        return item.write_to(self.results_dir)

    def step(self, raw: Mapping[str, Any], parent_start: int, path: str) -> dict[str, Any]:
        unknown = set(raw) - _STEP_KEYS
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_STEP_KEYS)}")
        if not raw.get("name"):
            raise ValueError(f"{path}: 'name' is required (e.g. 'shift 10%', 'poll 3/10')")
        start = _ms(raw.get("start"), parent_start)
        step: dict[str, Any] = {
            "name": self.text(raw["name"]),
            "status": _status(raw.get("status", "passed"), path),
            "stage": "finished",
            "start": start,
            "stop": _ms(raw.get("stop"), start),
            "parameters": [{"name": str(k), "value": self.text(v)} for k, v in (raw.get("parameters") or {}).items()],
            "attachments": [self.attachment(a) for a in raw.get("attachments") or ()],
            "steps": [self.step(s, start, f"{path}.steps[{i}]") for i, s in enumerate(raw.get("steps") or ())],
        }
        if raw.get("message"):
            step["statusDetails"] = {"message": self.text(raw["message"])}
        return step


def record_stage(results_dir: str | Path, *, env: str, stage: str, release: str, status: str,
                 steps: Sequence[Mapping[str, Any]], attachments: Sequence[Attachment],
                 failure: Mapping[str, Any] | None, started: float | datetime, stopped: float | datetime,
                 versions: Mapping[str, object] | None = None, secrets: Iterable[str] = ()) -> Path:
    """Write the stage verdict result (and its attachments) into ``results_dir``; return the result file.

    ``steps``: dicts with ``name`` and optionally ``status``, ``start``/``stop``
    (epoch seconds), ``message``, ``parameters`` (dict), ``attachments``
    (``Attachment``), ``steps`` (nested). ``failure``: ``message`` (starting with
    a ``categories`` prefix), or ``metric``, ``value``, ``threshold`` and
    optionally ``op``, ``window``, ``version``, ``unit``, ``prefix``; plus ``trace``.
    """
    status = _status(status, f"record_stage({env}/{stage})")
    results = Path(results_dir)
    writer = _Writer(results, list(secrets))
    results.mkdir(parents=True, exist_ok=True)
    start, stop = _ms(started, 0), _ms(stopped, 0)
    message = writer.text(failure_text(failure)) if failure else None
    if message is None and status != "passed":
        message = f"stage {stage} {status}"
    category = classify(message)
    case = hashlib.md5(f"llamadeploy|{env}|{stage}|{VERDICT}".encode()).hexdigest()
    result: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        # per release: two releases' verdicts of one stage in one report are two results, not a retry
        # (labels.IDENTITY); a re-run of the same release's stage is a retry, as it should be
        "historyId": hashlib.md5(f"llamadeploy|{env}|{stage}|{release}|{VERDICT}".encode()).hexdigest(),
        "testCaseId": case,
        "fullName": f"llamadeploy.{env}.{stage}#{VERDICT}",
        "name": writer.text(stage_title(env=env, stage=stage, release=release)),
        "status": status,
        "stage": "finished",
        "start": start,
        "stop": max(stop, start),
        "description": _description(env, stage, release, status, message, category.name if category else None),
        "labels": [{"name": n, "value": writer.text(v)} for n, v in (
            ("epic", env), ("feature", stage), ("story", VERDICT),
            ("parentSuite", env), ("suite", stage), ("subSuite", VERDICT),
            ("severity", "critical"), ("tag", "llamadeploy"), ("framework", "llamadeploy"),
        )],
        "parameters": [{"name": "release", "value": writer.text(release)}],
        "titlePath": [env, stage],
        "steps": [writer.step(s, start, f"record_stage steps[{i}]") for i, s in enumerate(steps)],
        "attachments": [writer.attachment(a) for a in attachments],
    }
    if versions:
        result["parameters"].append({"name": "versions", "value": writer.text(format_versions(versions)),
                                     "excluded": True})
    if message:
        details = {"message": message}
        if failure and failure.get("trace"):
            details["trace"] = writer.text(failure["trace"])
        result["statusDetails"] = details
    return _write_result(results, result)


def _description(env: str, stage: str, release: str, status: str, message: str | None,
                 category: str | None) -> str:
    lines = [f"Stage **{stage}** of release **{release}** in **{env}**: **{status}**."]
    if message:
        lines += ["", f"> {message}"]
    if category:
        lines += ["", f"Category: {category}."]
    lines += ["", "Steps below: the action, each traffic shift, each poll summary, and the rollback if any. "
              "The stage decision JSON lists every metric with its value, threshold, window, version and verdict."]
    return "\n".join(lines)


def _write_result(results: Path, result: dict[str, Any]) -> Path:
    target = results / f"{result['uuid']}-result.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(target)
    return target
