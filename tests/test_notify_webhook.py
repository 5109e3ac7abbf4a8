"""The webhook notifier: a real HTTP server on 127.0.0.1 receives each stage's notices, with no secret in them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pytest_llamadeploy.notify import build_payload, from_environment, kind_of
from pytest_llamadeploy.notify.webhook import redact_url
from tests.support.aws_setup import FUNCTIONS, alias_state
from tests.test_gate import gate, project  # noqa: F401  (the stand-in gate project fixture)

pytest_plugins = ["pytester"]

TOKEN = "T0LLAMA/B0DEPLOY/xoxb-webhook-secret-4242"
DSN_PASSWORD = "hunter2-notify"

#: A gate test that fails on demand with a secret in its message (the notice must carry it redacted).
SECRET_GATE = f"""\
import os

def test_fails_with_a_secret(llama):
    assert os.environ.get("FAIL_WITH_SECRET") != llama.stage, (
        "threshold breached: error rate 9% on postgresql://app:{DSN_PASSWORD}@db.internal/defillama")
"""


@dataclass
class Hook:
    """What the webhook server received: one dict per POST (path, content type, JSON body)."""

    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)

    def notices(self) -> list[dict[str, str]]:
        """Each post's attachment fields as a dict (title -> value)."""
        return [{f["title"]: f["value"] for f in p["body"]["attachments"][0]["fields"]} for p in self.posts]


def _serve(status: int = 200, hang: threading.Event | None = None) -> tuple[ThreadingHTTPServer, Hook]:
    hook = Hook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if hang is not None:
                hang.wait(10)  # bounded: the notifier gives up long before; the test sets it at the end
                return
            hook.posts.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/services/{TOKEN}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server, hook


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    server, hook = _serve()
    monkeypatch.setenv("LLAMADEPLOY_WEBHOOK_URL", hook.url)
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def test_stage_notices_reach_the_webhook_without_secrets(project: pytest.Pytester, aws: str,  # noqa: F811
                                                         webhook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    (project.path / "suites" / "health" / "test_secret_gate.py").write_text(SECRET_GATE)
    deployed = gate(project, "deploy")
    assert deployed.ret == 0, deployed.stdout.str()
    monkeypatch.setenv("FAIL_WITH_SECRET", "shift10")
    failed = gate(project, "shift10")
    assert failed.ret == 1, failed.stdout.str()
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}  # rolled back

    notices = webhook.notices()
    assert [(n["event"], n["stage"]) for n in notices] == [
        ("start", "deploy"), ("passed", "deploy"), ("start", "shift10"), ("breach", "shift10"), ("failed", "shift10")]
    for notice, post in zip(notices, webhook.posts, strict=True):
        assert post["path"] == f"/services/{TOKEN}" and post["type"] == "application/json"
        assert post["body"]["text"].startswith(f"llamadeploy: fastprod {notice['stage']} of v2: ")
        assert notice["env"] == "fastprod" and notice["release"] == "v2" and notice["approver"] == "alice"
    breach = notices[3]
    assert breach["reason"].startswith("threshold breached: 1 gate test(s) failed")
    assert "postgresql://app:***@db.internal" in breach["reason"]
    assert breach["alias"] == "onchain-api v1, onchain-ws v1"  # where the rollback left the alias
    assert notices[4]["status"] == "rolled_back"
    assert webhook.posts[3]["body"]["attachments"][0]["color"] == "danger"
    # No secret anywhere: not the DSN's password in the notices, not the webhook's token in the output.
    received = json.dumps(webhook.posts)
    assert DSN_PASSWORD not in received
    for run in (deployed, failed):
        output = run.stdout.str() + run.stderr.str()
        assert TOKEN not in output and "xoxb-webhook-secret" not in output


def test_a_hanging_webhook_never_stops_the_rollback(project: pytest.Pytester, aws: str,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    server, hook = _serve(hang=release)
    monkeypatch.setenv("LLAMADEPLOY_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("LLAMADEPLOY_WEBHOOK_TIMEOUT", "0.3")
    monkeypatch.setenv("FAIL_GATE_AT", "deploy")
    try:
        failed = gate(project, "deploy")
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert failed.ret == 1
    failed.stdout.fnmatch_lines(["fastprod deploy v2: ROLLED_BACK"])
    assert alias_state(aws) == {fn: ("1", {}) for fn in FUNCTIONS}
    output = failed.stdout.str() + failed.stderr.str()
    port = hook.url.split(":")[2].split("/")[0]
    for event in ("start", "rollback", "fail"):
        assert f"llamadeploy: webhook notice '{event}' to http://127.0.0.1:{port}/*** not delivered" in output
    assert TOKEN not in output


def test_a_refusing_webhook_is_reported_not_raised() -> None:
    server, hook = _serve(status=500)
    lines: list[str] = []
    try:
        notifier = from_environment({"LLAMADEPLOY_WEBHOOK_URL": hook.url}, out=lines.append)
        assert notifier is not None
        assert notifier.post("start", {"text": "x"}) is False
    finally:
        server.shutdown()
        server.server_close()
    assert lines == [f"llamadeploy: webhook notice 'start' to {redact_url(hook.url)} refused: HTTP 500"]
    assert TOKEN not in redact_url(hook.url)


@pytest.mark.parametrize(("environ", "said"), [
    ({}, None),
    ({"LLAMADEPLOY_WEBHOOK_URL": "hooks.slack.com/services/T0/B0/x"}, "is not an http(s) URL (value not shown)"),
    ({"LLAMADEPLOY_WEBHOOK_URL": "https://hooks.example/x", "LLAMADEPLOY_WEBHOOK_TIMEOUT": "soon"},
     "LLAMADEPLOY_WEBHOOK_TIMEOUT='soon' is not a number of seconds"),
])
def test_configuration_from_the_environment(environ: dict[str, str], said: str | None) -> None:
    lines: list[str] = []
    notifier = from_environment(environ, out=lines.append)
    if said is None:
        assert notifier is None and lines == []
        return
    assert said in lines[0] and "T0/B0" not in lines[0]
    if "TIMEOUT" in said:
        assert notifier is not None and notifier.timeout == 5.0


def test_the_url_leaves_the_environment_once_read() -> None:
    environ = {"LLAMADEPLOY_WEBHOOK_URL": f"https://hooks.example/services/{TOKEN}", "OTHER": "kept"}
    notifier = from_environment(environ, out=print, consume=True)
    assert notifier is not None and notifier.where == "https://hooks.example/***"
    assert environ == {"OTHER": "kept"}


# --- which notice an event is (pure) ------------------------------------------------------------

NEW = {"onchain-api": "2", "onchain-ws": "2"}
ON_OLD = {fn: {"version": "1", "weights": {}} for fn in NEW}
AT_TEN = {fn: {"version": "1", "weights": {"2": 0.1}} for fn in NEW}
ON_NEW = {fn: {"version": "2", "weights": {}} for fn in NEW}


@pytest.mark.parametrize(("event", "record", "kind"), [
    ("start", {}, "start"),
    ("pass", {"new_versions": NEW, "weights_before": AT_TEN, "weights_after": AT_TEN}, "passed"),
    ("pass", {"new_versions": NEW, "weights_before": {fn: {"version": "1", "weights": {"2": 0.5}} for fn in NEW},
              "weights_after": ON_NEW}, "promoted"),
    ("pass", {"new_versions": NEW, "weights_before": ON_NEW, "weights_after": ON_NEW}, "passed"),  # verify
    ("rollback", {"details": {"rollback": {"reason": "rollback triggered: lambda error rate 9% > 5%"}}}, "breach"),
    ("rollback", {"details": {"rollback": {"reason": "probe failed: GET /stats -> 502"}}}, "breach"),
    ("rollback", {"details": {"rollback": {"reason": "inconclusive: the run was interrupted (interrupted)"}}},
     "rollback"),
    ("fail", {"status": "rolled_back"}, "failed"),
    ("fail", {"status": "paused"}, "paused"),  # watch.on_inconclusive: pause, awaiting llamadeploy decide
])
def test_kind_of_each_event(event: str, record: dict[str, Any], kind: str) -> None:
    assert kind_of(event, record) == kind


def test_promotion_notice_says_the_new_version_serves_everything() -> None:
    record = {"env": "prod", "stage": "shift100", "release": "v1.2.3", "status": "passed", "approver": "alice",
              "new_versions": NEW, "weights_before": {fn: {"version": "1", "weights": {"2": 0.5}} for fn in NEW},
              "weights_after": ON_NEW, "run_id": "r1", "reason": ""}
    body = build_payload("pass", record)
    assert body["text"] == "llamadeploy: prod shift100 of v1.2.3: promoted: the new version serves 100%"
    fields = {f["title"]: f["value"] for f in body["attachments"][0]["fields"]}
    assert fields["event"] == "promoted" and fields["alias"] == "onchain-api v2, onchain-ws v2"
    assert "reason" not in fields and body["attachments"][0]["color"] == "good"
