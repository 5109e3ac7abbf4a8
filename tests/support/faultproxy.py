"""An HTTP proxy on 127.0.0.1 in front of moto that fails chosen AWS API calls.

The gate reaches it through ``AWS_ENDPOINT_URL`` exactly as it reaches moto (or
AWS), so every boto3 call of the stage passes through: it records each call as
``service.Operation`` plus the function or item it names, forwards it to moto,
and fails the calls a rule selects the way AWS fails:

- ``throttle``: HTTP 400 ``ThrottlingException`` (DynamoDB) / 429 ``TooManyRequestsException`` (Lambda);
- ``http500``: HTTP 500 ``InternalFailure``;
- ``reset``: the connection is reset (RST) before any answer;
- ``timeout``: no answer until the client's read timeout (bounded by ``hold``), then closed.

Loopback only, daemon threads, and the server stops by itself after ``lifetime`` seconds.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

KINDS = ("throttle", "http500", "reset", "timeout")

_LAMBDA_ROUTES = [
    ("GET", re.compile(r"^/2015-03-31/functions/([^/]+)/aliases/[^/]+$"), "GetAlias"),
    ("PUT", re.compile(r"^/2015-03-31/functions/([^/]+)/aliases/[^/]+$"), "UpdateAlias"),
    ("GET", re.compile(r"^/2015-03-31/functions/([^/]+)/versions$"), "ListVersionsByFunction"),
    ("POST", re.compile(r"^/2015-03-31/functions/([^/]+)/versions$"), "PublishVersion"),
    ("GET", re.compile(r"^/2015-03-31/functions/([^/]+)/configuration$"), "GetFunctionConfiguration"),
    ("PUT", re.compile(r"^/2015-03-31/functions/([^/]+)/configuration$"), "UpdateFunctionConfiguration"),
]


@dataclass
class Call:
    operation: str  # "lambda.UpdateAlias", "dynamodb.TransactWriteItems"
    target: str  # the function name, or the item's sort key, or ""
    faulted: str = ""

    def __str__(self) -> str:
        return f"{self.operation}({self.target})" + (f" !{self.faulted}" if self.faulted else "")


@dataclass
class Rule:
    operation: str
    kind: str
    target: str | None = None
    after: int = 0  # matching calls let through first
    count: int = 10**9  # matching calls failed after that
    seen: int = 0
    failed: int = 0

    def take(self, call: Call) -> bool:
        if call.operation != self.operation or (self.target is not None and self.target not in call.target):
            return False
        self.seen += 1
        if self.seen <= self.after or self.failed >= self.count:
            return False
        self.failed += 1
        return True


@dataclass
class FaultProxy:
    upstream: str
    hold: float = 3.0
    lifetime: float = 900.0
    calls: list[Call] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        parts = urlsplit(self.upstream)
        self._up_host, self._up_port = parts.hostname or "127.0.0.1", parts.port or 80

    def fail(self, operation: str, kind: str, *, target: str | None = None, after: int = 0,
             count: int = 10**9) -> Rule:
        assert kind in KINDS, kind
        rule = Rule(operation, kind, target, after, count)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.calls.clear()

    def operations(self) -> list[str]:
        with self._lock:
            return [c.operation for c in self.calls]

    def _decide(self, call: Call) -> str:
        with self._lock:
            self.calls.append(call)
            for rule in self.rules:
                if rule.take(call):
                    call.faulted = rule.kind
                    return rule.kind
        return ""

    @contextmanager
    def running(self) -> Iterator[FaultProxy]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                call = _identify(self.command, self.path, dict(self.headers), body)
                kind = proxy._decide(call)
                if kind == "reset":
                    # SO_LINGER 0: close() sends RST, as a dropped connection does.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if kind == "timeout":
                    time.sleep(proxy.hold)  # longer than the client's read timeout; bounded
                    self.close_connection = True
                    return
                if kind in ("throttle", "http500"):
                    self._error(call, kind)
                    return
                self._forward(body)

            def _error(self, call: Call, kind: str) -> None:
                lam = call.operation.startswith("lambda.")
                if kind == "throttle":
                    status, code = (429, "TooManyRequestsException") if lam else (400, "ThrottlingException")
                else:
                    status, code = 500, "InternalFailure" if lam else "InternalServerError"
                payload = json.dumps({"__type": code, "message": f"fault proxy: {kind}", "Type": "Service"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("x-amzn-ErrorType", code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(proxy._up_host, proxy._up_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
                    headers["Host"] = f"{proxy._up_host}:{proxy._up_port}"
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle  # noqa: N815

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        stopper = threading.Timer(self.lifetime, server.shutdown)  # bounded even if a test forgets it
        stopper.daemon = True
        stopper.start()
        try:
            yield self
        finally:
            stopper.cancel()
            server.shutdown()
            server.server_close()
            thread.join(5)


def _identify(method: str, path: str, headers: dict[str, str], body: bytes) -> Call:
    """service.Operation and what it acts on, from the request as botocore sends it."""
    lowered = {k.lower(): v for k, v in headers.items()}
    target = lowered.get("x-amz-target", "")
    if target:  # JSON protocol: DynamoDB_20120810.PutItem
        service = "dynamodb" if target.startswith("DynamoDB") else target.split("_")[0].lower()
        operation = target.rsplit(".", 1)[-1]
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            doc = {}
        return Call(f"{service}.{operation}", _item_of(doc))
    route = urlsplit(path).path
    for verb, pattern, operation in _LAMBDA_ROUTES:
        match = pattern.match(route)
        if verb == method and match:
            return Call(f"lambda.{operation}", unquote(match.group(1)))
    scope = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", lowered.get("authorization", ""))
    service = scope.group(1) if scope else "unknown"
    action = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
    return Call(f"{service}.{action or method + ' ' + route}", "")


def _item_of(doc: dict[str, object]) -> str:
    """The sort key a DynamoDB request names (lock, rec#v2#shift10), for rules that target one item."""
    text = json.dumps(doc)
    keys = re.findall(r'"sk": \{"S": "([^"]+)"\}', text)
    return ",".join(keys)
