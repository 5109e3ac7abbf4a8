"""Fixtures of the functional gate: clients aimed where the stage says.

At a deploy stage (``llama.probe_new_directly``) the new version serves 0 % of
traffic, so every request and WebSocket connection goes through the preview
stage (``targets.preview_api_url`` / ``preview_ws_url``), whose integrations call
the preview alias: the release under test, reached exactly as on AWS. At later
stages they go through the live stage, as users do.

What the suite writes is test data of this run (pytest_llamadeploy/testdata.py):
allowed by the policy's ``test_data.write``, on chains tagged with the run id,
removed at the end of the session even when a test fails; alerts are read from
a queue of the run's own subscribed to the alert topic, never from the
production alerts queue.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

HTTP_TIMEOUT = 10.0
WS_OPEN_TIMEOUT = 10.0
FUNCTIONAL_USER = "llamadeploy-functional"


def _url(llama: Any, kind: str) -> str:
    """The live stage's URL, or the preview stage's at 0 %."""
    key = f"preview_{kind}" if llama.probe_new_directly else kind
    url = llama.resolved_targets.__dict__.get(key, "")
    if not url:
        pytest.fail(f"stage {llama.stage} tests the new version at 0 % through the preview stage, but targets."
                    f"{key} is not set for env {llama.env}: set it to the URL of the preview stage whose "
                    f"integration calls the {llama.policy.service.preview_alias} alias (README, AWS section)",
                    pytrace=False)
    return url


@pytest.fixture(scope="session")
def api_url(llama: Any) -> str:
    return _url(llama, "api_url").rstrip("/")


@pytest.fixture(scope="session")
def ws_url(llama: Any) -> str:
    return _url(llama, "ws_url")


@pytest.fixture(scope="session")
def where(llama: Any) -> str:
    """How failure messages name the target: the stage, and the release under test."""
    if llama.probe_new_directly:
        return (f"the preview stage: new version {llama.new_versions.get(llama.api_function)} of "
                f"{llama.api_function} (release {llama.release}, 0 % of users)")
    return f"the live stage (release {llama.release}, stage {llama.stage})"


@pytest.fixture(scope="session")
def api(llama: Any, api_url: str) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=api_url, timeout=HTTP_TIMEOUT, trust_env=False) as client:
        yield client


@pytest.fixture(scope="session")
def token(api: Any, api_url: str, where: str) -> str:
    response = api.post("/auth/token", json={"user": FUNCTIONAL_USER})
    assert response.status_code == 200, (
        f"POST {api_url}/auth/token via {where}: expected 200 with a token, got {response.status_code} "
        f"{response.text[:300]}")
    return str(response.json()["token"])


@pytest.fixture(scope="session")
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class WsSession:
    """A WebSocket connection that keeps what it read, so waiting for one message loses no other."""

    def __init__(self, connection: Any, url: str):
        self.connection = connection
        self.url = url
        self.received: list[tuple[float, dict[str, Any]]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.connection.send(json.dumps(message))

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> tuple[float, dict[str, Any]] | None:
        """The first (arrival time, message) matching, already read or arriving within ``timeout``; None if none."""
        for item in self.received:
            if match(item[1]):
                return item
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                raw = self.connection.recv(timeout=left)
            except TimeoutError:
                return None
            item = (time.monotonic(), json.loads(raw))
            self.received.append(item)
            if match(item[1]):
                return item
        return None

    def all(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [m for _, m in self.received if match(m)]


@pytest.fixture
def ws_connect(llama: Any, ws_url: str, where: str) -> Iterator[Callable[[], WsSession]]:
    """Opens WebSocket sessions to the stage's target; all closed at teardown.

    Each connection is entered as a context manager on one ExitStack (websockets
    deprecates using ``connect()``'s result without ``with``); a refused or
    failed handshake fails the test with a message naming the WebSocket connect.
    """
    from websockets.sync.client import connect

    with contextlib.ExitStack() as opened:

        def open_session() -> WsSession:
            try:
                connection = opened.enter_context(
                    connect(ws_url, open_timeout=WS_OPEN_TIMEOUT, close_timeout=2))
            except Exception as exc:  # noqa: BLE001 - every handshake failure is the gate's answer
                status = getattr(getattr(exc, "response", None), "status_code", None)
                pytest.fail(f"WebSocket connect to {ws_url} via {where} failed"
                            + (f": handshake answered HTTP {status}" if status else "")
                            + f" ({type(exc).__name__}: {exc})", pytrace=False)
            return WsSession(connection, ws_url)

        yield open_session


@pytest.fixture
def subscribed(ws_connect: Callable[[], WsSession], where: str) -> Callable[..., WsSession]:
    """A session past its hello, subscribed to ``channels``."""

    def make(*channels: str) -> WsSession:
        session = ws_connect()
        hello = session.wait_for(lambda m: m.get("type") == "hello", 5.0)
        assert hello is not None, f"WebSocket {session.url} via {where}: no hello message within 5s of connecting"
        for channel in channels:
            session.send({"action": "subscribe", "channel": channel})
            ack = session.wait_for(lambda m, c=channel: m.get("type") == "subscribed" and m.get("channel") == c, 5.0)
            assert ack is not None, (f"WebSocket {session.url} via {where}: subscribe to {channel!r} not acknowledged "
                                     f"within 5s; got {[m for _, m in session.received]}")
        return session

    return make


@pytest.fixture(scope="session")
def test_data(llama: Any) -> Iterator[str]:
    """The run's tag (the prefix of every chain the suite writes for); its rows and keys are removed at the end.

    Skips the writing tests where the policy does not allow the suite to write; fails them where the
    data could not be removed (no database target).
    """
    from pytest_llamadeploy.testdata import remove_keys, remove_rows, run_tag, write_refusal

    refusal = write_refusal(llama.policy, llama.env, "functional")
    if refusal:
        pytest.skip(refusal)
    targets = llama.resolved_targets
    if not targets.postgres_dsn:
        pytest.fail(f"env {llama.env}: the functional suite writes alert rules and removes them afterwards, which "
                    "needs targets.postgres_dsn; set it, or remove functional from test_data.write", pytrace=False)
    tag = run_tag(llama.run_id or uuid.uuid4().hex)
    try:
        yield tag
    finally:  # whatever the tests' outcome
        removed = remove_rows(targets.postgres_dsn, tag)
        keys = remove_keys(targets.redis_url, tag) if targets.redis_url else 0
        print(f"functional: removed the test data of {tag}: {removed['alert_rules']} alert rule(s), "
              f"{removed['alerts']} alert(s), {keys} Redis key(s)")


@pytest.fixture
def fresh_chain(test_data: str) -> str:
    """A chain name no one else uses, tagged with the run: its events and alerts cannot mix with other traffic."""
    return f"{test_data}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def alert_inbox(llama: Any, test_data: str) -> Iterator[Any]:
    """A queue of the run's own subscribed to the alert topic (resources.alerts_topic); deleted afterwards."""
    from pytest_llamadeploy.testdata import AlertInbox

    try:
        inbox = AlertInbox.open(llama.client("sqs"), llama.client("sns"), llama.policy.resources.alerts_topic,
                                test_data)
    except LookupError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield inbox
    finally:
        inbox.close()

