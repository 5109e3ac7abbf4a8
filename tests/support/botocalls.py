"""Record every AWS API call botocore makes (an event hook on each client), and check them against an IAM document.

``install(path, stage)`` registers a ``provide-client-params`` handler (it sees the
caller's own parameters, before serialisation) on the events of every botocore
client created from then on (sessions may be cached; clients are made per use); each call appends one JSON line ``{"stage",
"action", "queue_url"}`` to ``path``. The gate tests' subprocesses install it from
their conftest when ``BOTOCALLS`` names a file (tests/test_gate.py).
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

#: botocore's service name -> IAM's service prefix, where they differ.
_IAM_PREFIX = {"apigatewayv2": "apigateway"}


def iam_action(service: str, operation: str, http_method: str) -> str:
    """The IAM action of one API call: ``lambda:UpdateAlias``; API Gateway's management API is authorised
    per HTTP verb (``apigateway:GET``)."""
    prefix = _IAM_PREFIX.get(service, service)
    if prefix == "apigateway":
        return f"apigateway:{http_method.upper()}"
    return f"{prefix}:{operation}"


def _stage_from_argv(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--stage="):
            return arg.split("=", 1)[1]
        if arg == "--stage" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def install(path: str | Path, stage: str | None = None) -> None:
    """Record every call of every botocore client created after this (idempotent per process and path)."""
    import botocore.client

    if getattr(botocore.client.BaseClient, "_llama_recording", None) == str(path):
        return
    where = Path(path)
    label = stage if stage is not None else _stage_from_argv(sys.argv)
    original = botocore.client.BaseClient.__init__

    def record(model: Any, params: Any, **_: Any) -> None:
        service = model.service_model.service_name
        line = {"stage": label, "action": iam_action(service, model.name, model.http.get("method", "POST")),
                "queue_url": params.get("QueueUrl") if isinstance(params, dict) else None}
        with where.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.meta.events.register("provide-client-params", record)  # returns None: the parameters stay as given

    botocore.client.BaseClient.__init__ = init  # type: ignore[method-assign]
    botocore.client.BaseClient._llama_recording = str(path)  # type: ignore[attr-defined]


def recorded(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def allowed_actions(document: dict[str, Any], sids: set[str]) -> list[str]:
    """The Allow actions of the statements whose Sid is in ``sids``."""
    actions: list[str] = []
    for statement in document["Statement"]:
        if statement.get("Effect") == "Allow" and statement.get("Sid") in sids:
            action = statement["Action"]
            actions += [action] if isinstance(action, str) else list(action)
    return actions


def not_allowed(calls: list[str], patterns: list[str]) -> list[str]:
    """The calls (``service:Operation``) no pattern allows (IAM matches actions case-insensitively, with ``*``)."""
    return sorted({c for c in calls if not any(fnmatch.fnmatchcase(c.lower(), p.lower()) for p in patterns)})
