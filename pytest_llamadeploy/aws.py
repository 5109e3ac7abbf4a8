"""boto3 clients for a policy: the same code for AWS and for the sandbox.

Against AWS nothing is set here: boto3's standard configuration decides the
endpoint and credentials (``AWS_ENDPOINT_URL``, profiles, the credential
chain), so any environment can also be pointed at moto from the outside. Only
a policy with ``aws.endpoint: sandbox`` takes its endpoint from the running
sandbox's state file.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from .policy import Policy


@dataclass(frozen=True)
class AwsConfig:
    region: str
    endpoint_url: str | None = None
    max_attempts: int = 3
    #: Only set for the sandbox (moto takes any key); never real credentials.
    credentials: dict[str, str] = field(default_factory=dict)
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    #: Per-service endpoints (the sandbox's Lambda API is its front door, which passes the rest to moto).
    endpoints: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What a stage context carries to the gate tests (AwsConfig(**it) rebuilds this config)."""
        return {"region": self.region, "endpoint_url": self.endpoint_url, "max_attempts": self.max_attempts,
                "read_timeout": self.read_timeout, "credentials": dict(self.credentials),
                "endpoints": dict(self.endpoints)}

    def session(self) -> boto3.Session:
        # One boto3 Session per config and thread: building one costs 0.1-0.3 s (it loads
        # the data files), and boto3 sessions must not be shared between threads.
        return _session(self.region, tuple(sorted(self.credentials.items())), threading.get_ident())

    def client(self, service: str, **overrides: Any) -> Any:
        """A client of ``service``; ``overrides`` replace this config's attempts and timeouts, the rest go to botocore's Config."""
        config = Config(
            retries={"max_attempts": overrides.pop("max_attempts", self.max_attempts), "mode": "standard"},
            connect_timeout=overrides.pop("connect_timeout", self.connect_timeout),
            read_timeout=overrides.pop("read_timeout", self.read_timeout),
            **overrides,
        )
        kwargs: dict[str, Any] = {"config": config}
        endpoint = self.endpoints.get(service) or self.endpoint_url
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        return self.session().client(service, **kwargs)


@functools.lru_cache(maxsize=32)
def _session(region: str, credentials: tuple[tuple[str, str], ...], thread: int) -> boto3.Session:
    return boto3.Session(region_name=region, **dict(credentials))


def aws_config(policy: Policy, sandbox_directory: Path | str | None = None) -> AwsConfig:
    """The AWS configuration a policy runs with (reads the sandbox state when the policy says so)."""
    if policy.aws.endpoint == "sandbox":
        from .sandbox.state import SANDBOX_CREDENTIALS, SandboxState

        state = SandboxState.load(sandbox_directory)
        return AwsConfig(
            region=state.region or policy.aws.region,
            endpoint_url=state.aws_endpoint,
            # moto answers unimplemented calls with 500: retrying them only wastes the bake.
            max_attempts=min(policy.aws.max_attempts, 2),
            credentials=dict(SANDBOX_CREDENTIALS),
            # Lambda's Invoke runs the releases: the front door plays it (and passes the rest to moto).
            endpoints={"lambda": state.lambda_endpoint} if state.lambda_endpoint else {},
        )
    return AwsConfig(region=policy.aws.region, max_attempts=policy.aws.max_attempts,
                     read_timeout=float(policy.aws.read_timeout))
