"""Where the gates probe: URLs and DSNs resolved from the policy.

Values may reference environment variables as ``${NAME}`` so secrets come from
CI's secret store, never from YAML. ``source: sandbox`` reads the sandbox state.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .policy import Policy

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TargetError(Exception):
    pass


@dataclass(frozen=True)
class ResolvedTargets:
    api_url: str
    ws_url: str
    postgres_dsn: str
    redis_url: str
    sqs_queue_url: str
    #: "sandbox" or "env": where the values came from.
    source: str
    #: The preview stage: the preview alias, i.e. the release under test, whatever its share of traffic.
    preview_api_url: str = ""
    preview_ws_url: str = ""

    def __repr__(self) -> str:
        # pytest prints the locals of a failing frame (``self`` included): DSNs carry passwords.
        from .redact import redact

        fields = ", ".join(f"{f.name}={redact(str(getattr(self, f.name)))!r}" for f in dataclasses.fields(self))
        return f"ResolvedTargets({fields})"

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            raise TargetError(f"target {name} is not configured for this env (policy key targets.{name})")
        return value


def _expand(key: str, value: str, environ: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise TargetError(f"targets.{key} references ${{{name}}}, which is not set; export {name}")
        return environ[name]

    return _REF.sub(sub, value)


def resolve_targets(policy: Policy, sandbox_directory: Path | str | None = None,
                    environ: dict[str, str] | None = None) -> ResolvedTargets:
    environ = dict(os.environ if environ is None else environ)
    t = policy.targets
    if t.source == "sandbox":
        from .sandbox.state import SandboxState

        s = SandboxState.load(sandbox_directory)
        return ResolvedTargets(s.api_url, s.ws_url, s.postgres_dsn, s.redis_url, s.sqs_queue_url, "sandbox",
                               s.preview_api_url, s.preview_ws_url)
    keys = ("api_url", "ws_url", "postgres_dsn", "redis_url", "sqs_queue_url", "preview_api_url", "preview_ws_url")
    values = {k: _expand(k, getattr(t, k), environ) for k in keys}
    return ResolvedTargets(**values, source="env")
