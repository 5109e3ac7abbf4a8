"""Webhook notices (Slack-compatible JSON) of a stage: started, breach, rolled back, promoted, passed, failed.

A plugin of the ``pytest_llamadeploy_notify`` hookspec, registered on the
controller when ``LLAMADEPLOY_WEBHOOK_URL`` is set. The URL is a secret (a
Slack webhook's token is its path): it is never printed, only its scheme and
host, and the plugin takes it out of the process environment once read. Each post is bounded by ``LLAMADEPLOY_WEBHOOK_TIMEOUT`` seconds
(default 5) and a failed post is reported and dropped: the runner calls the
hook after the traffic moved, and a notice must never hold up or stop a
rollback.

The body is Slack's incoming-webhook format: ``text`` for the message, and one
``attachments`` entry whose ``fields`` (title/value) carry the stage record for
anything that reads the JSON (Mattermost, Rocket.Chat and Discord's
``/slack`` endpoint accept the same body).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from ..redact import redact
from ..reporting.categories import PROBE_FAILED, ROLLBACK_TRIGGERED, THRESHOLD_BREACHED

URL_ENV = "LLAMADEPLOY_WEBHOOK_URL"
TIMEOUT_ENV = "LLAMADEPLOY_WEBHOOK_TIMEOUT"
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 30.0

#: A rollback whose reason starts with one of these is a breach: a metric or a probe said no.
BREACH_PREFIXES = (ROLLBACK_TRIGGERED, THRESHOLD_BREACHED, PROBE_FAILED)

#: kind -> (Slack attachment colour, headline verb)
KINDS: dict[str, tuple[str, str]] = {
    "start": ("#439FE0", "started"),
    "breach": ("danger", "BREACH, rolled back"),
    "rollback": ("warning", "rolled back"),
    "promoted": ("good", "promoted: the new version serves 100%"),
    "passed": ("good", "passed"),
    "failed": ("danger", "FAILED"),
    "rollback_failed": ("danger", "ROLLBACK FAILED: traffic is split, the env needs attention"),
    "paused": ("warning", "PAUSED: traffic left as it is, awaiting a decision (llamadeploy decide)"),
}


def redact_url(url: str) -> str:
    """``https://hooks.slack.com/services/T0/B0/xyz`` -> ``https://hooks.slack.com/***``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    return f"{parts.scheme or '?'}://{host}{port}/***"


def _serving_all(state: Mapping[str, Any], versions: Mapping[str, str]) -> bool:
    """Every function's alias on its new version, with no weighted routing left."""
    return bool(versions) and all(
        isinstance(state.get(fn), Mapping) and str(state[fn].get("version")) == str(v) and not state[fn].get("weights")
        for fn, v in versions.items())


def kind_of(event: str, record: Mapping[str, Any]) -> str:
    """The notice a runner event is: start, breach, rollback, rollback_failed, promoted, passed, paused or failed."""
    if event in ("start", "rollback_failed"):
        return event
    if event == "rollback":
        reason = str((record.get("details") or {}).get("rollback", {}).get("reason") or record.get("reason") or "")
        return "breach" if reason.startswith(BREACH_PREFIXES) else "rollback"
    if event == "pass":
        new = record.get("new_versions") or {}
        moved_now = _serving_all(record.get("weights_after") or {}, new) and not _serving_all(
            record.get("weights_before") or {}, new)
        return "promoted" if moved_now else "passed"
    if record.get("status") == "paused":  # told as "fail" (watch.on_inconclusive: pause; judgement.py)
        return "paused"
    return "failed"


def build_payload(event: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack-compatible body for one notice (the record is already redacted by the runner)."""
    from ..evidence import _describe_alias

    kind = kind_of(event, record)
    colour, verb = KINDS[kind]
    env, stage, release = record.get("env", "?"), record.get("stage", "?"), record.get("release") or "(no release)"
    details = record.get("details") or {}
    rollback_kinds = ("breach", "rollback", "rollback_failed")
    reason = str(details.get("rollback", {}).get("reason") or record.get("reason") or "") if kind in (
        rollback_kinds) else str(record.get("reason") or "")
    alias = details.get("rollback", {}).get("after") if kind in rollback_kinds else record.get("weights_after")
    fields = {
        "event": kind,
        "env": env,
        "stage": stage,
        "release": release,
        "status": record.get("status", ""),
        "reason": reason,
        "approver": record.get("approver") or "",
        "alias": _describe_alias(alias) if alias else "",
        "new versions": ", ".join(f"{fn} v{v}" for fn, v in sorted((record.get("new_versions") or {}).items())),
        "run": record.get("run_id", ""),
    }
    fields = {k: redact(str(v)) for k, v in fields.items()}  # the runner redacted the record; a second pass is cheap
    text = f"llamadeploy: {env} {stage} of {release}: {verb}" + (f" ({fields['reason']})" if reason else "")
    return {
        "text": text,
        "attachments": [{
            "fallback": text,
            "color": colour,
            "title": f"{env} / {stage} / {release}",
            "fields": [{"title": k, "value": v, "short": len(v) <= 40} for k, v in fields.items() if v],
            "footer": "llamadeploy",
            "ts": int(time.time()),
        }],
    }


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class WebhookNotifier:
    """Posts each runner event to one webhook; registered as a pluggy plugin object."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT, out: Callable[[str], None] = _stderr):
        self._url = url
        self.timeout = timeout
        self.out = out
        self.where = redact_url(url)

    def pytest_llamadeploy_notify(self, event: str, record: dict[str, Any]) -> None:
        self.post(event, build_payload(event, record))

    def post(self, event: str, payload: Mapping[str, Any]) -> bool:
        """One bounded POST; False (and a line saying why, without the URL) when it did not get a 2xx."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self._url, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "llamadeploy"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) checked
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except Exception as exc:  # timeout, refused, DNS: the notice is lost, the stage goes on
            reason = getattr(exc, "reason", exc)
            self.out(f"llamadeploy: webhook notice '{event}' to {self.where} not delivered: "
                     f"{type(exc).__name__}: {str(reason).replace(self._url, self.where)}")
            return False
        if not 200 <= status < 300:
            self.out(f"llamadeploy: webhook notice '{event}' to {self.where} refused: HTTP {status}")
            return False
        return True


def from_environment(environ: Mapping[str, str] | None = None, out: Callable[[str], None] = _stderr, *,
                     consume: bool = False) -> WebhookNotifier | None:
    """The notifier ``LLAMADEPLOY_WEBHOOK_URL`` asks for, or None (unset, or unusable: said, never fatal).

    ``consume``: take the URL out of ``environ`` once read, so that nothing started later sees the
    secret: not a gate test (pytest prints ``os.environ`` when a failing assertion reads it), not the
    deploy command, not Locust.
    """
    env = os.environ if environ is None else environ
    url = env.get(URL_ENV, "").strip()
    if consume and isinstance(env, MutableMapping):
        env.pop(URL_ENV, None)
    if not url:
        return None
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        # Not a refusal: a rollback must never wait for a notifier's configuration.
        out(f"llamadeploy: {URL_ENV} is not an http(s) URL (value not shown): webhook notices are off; "
            "set it to the webhook's URL, e.g. https://hooks.slack.com/services/...")
        return None
    raw = env.get(TIMEOUT_ENV, "").strip()
    try:
        timeout = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= MAX_TIMEOUT:
        out(f"llamadeploy: {TIMEOUT_ENV}={raw!r} is not a number of seconds in (0, {MAX_TIMEOUT:g}]; "
            f"using {DEFAULT_TIMEOUT:g}")
        timeout = DEFAULT_TIMEOUT
    return WebhookNotifier(url, timeout, out)
