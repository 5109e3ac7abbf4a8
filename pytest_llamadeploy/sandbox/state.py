"""The sandbox's state folder: where its processes, ports and endpoints are written down.

Everything that talks to a running sandbox (the gate, the CLI, tests) reads
``state.json`` through this module, so the file's shape lives in one place.
Writes are atomic (temp file + rename) so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_DIR = "LLAMADEPLOY_SANDBOX_DIR"
DEFAULT_DIR = Path(".llamadeploy/sandbox")
#: Header every response of the reference service carries.
RELEASE_HEADER = "x-llama-release"
#: moto accepts any credentials; these are never real.
SANDBOX_CREDENTIALS = {"aws_access_key_id": "sandbox", "aws_secret_access_key": "sandbox"}


class SandboxNotRunning(Exception):
    def __init__(self, directory: Path, detail: str = ""):
        self.directory = directory
        super().__init__(
            f"no running sandbox in {directory}{': ' + detail if detail else ''}; "
            f"start one with `llamadeploy sandbox up` (or set {ENV_DIR})"
        )


def sandbox_dir(directory: Path | str | None = None) -> Path:
    if directory is not None:
        return Path(directory).resolve()
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR).resolve()


@dataclass
class SandboxState:
    directory: Path
    region: str = "us-east-1"
    aws_endpoint: str = ""
    api_url: str = ""
    ws_url: str = ""
    postgres_dsn: str = ""
    redis_url: str = ""
    sqs_queue_url: str = ""
    #: The preview stage (the release under test at 0 %) and Lambda's Invoke API, both on the front door.
    preview_api_url: str = ""
    preview_ws_url: str = ""
    lambda_endpoint: str = ""
    #: name -> {"pid": int, "port": int, ...} for each long-running component.
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: release -> {"pid", "port", "url", "faults": {...}, "lambda_versions": {function: version}}
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / "state.json"

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "aws_endpoint": self.aws_endpoint,
            "api_url": self.api_url,
            "ws_url": self.ws_url,
            "postgres_dsn": self.postgres_dsn,
            "redis_url": self.redis_url,
            "sqs_queue_url": self.sqs_queue_url,
            "preview_api_url": self.preview_api_url,
            "preview_ws_url": self.preview_ws_url,
            "lambda_endpoint": self.lambda_endpoint,
            "components": self.components,
            "versions": self.versions,
            **({"extra": self.extra} if self.extra else {}),
        }

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, directory: Path | str | None = None) -> SandboxState:
        directory = sandbox_dir(directory)
        path = directory / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SandboxNotRunning(directory) from None
        except json.JSONDecodeError as exc:
            raise SandboxNotRunning(directory, f"state.json is not JSON ({exc})") from None
        known = {k: data.get(k, "") for k in ("region", "aws_endpoint", "api_url", "ws_url", "postgres_dsn", "redis_url",
                                              "sqs_queue_url", "preview_api_url", "preview_ws_url", "lambda_endpoint")}
        return cls(
            directory=directory,
            components=data.get("components", {}),
            versions=data.get("versions", {}),
            extra=data.get("extra", {}),
            **known,
        )
