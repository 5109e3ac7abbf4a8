"""Deploying and breaking versions: one service process per release, one Lambda version per function.

``deploy_release`` is what the sandbox policy's deploy command runs: it starts
the release's process, points each function's configuration at it and
publishes a version. It never moves the alias: shifting traffic is the gate's
job (``traffic.py``), exactly as on AWS.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from ..net import free_port
from ..traffic import RELEASE_VARIABLE
from .provision import FUNCTIONS, sandbox_aws
from .state import SandboxState
from .supervisor import (
    SandboxError,
    child_env,
    http_answers,
    pid_matches,
    python_module,
    runnable,
    spawn,
    wait_until,
)

SERVICE_MODULE = "pytest_llamadeploy.sandbox.service"
#: Extra faults for ``sandbox deploy``, "knob=value,knob=value": lets a rehearsal deploy a bad
#: release through the policy's unmodified deploy command.
FAULTS_ENV = "LLAMADEPLOY_SANDBOX_FAULTS"


class FaultError(SandboxError):
    """An unknown knob or a bad value (exit code 2)."""


@contextmanager
def state_lock(directory: Path, timeout: float = 120.0) -> Iterator[None]:
    """Serialise read-modify-write of state.json between the CLI's processes (deploy, fault, up, down)."""
    from filelock import FileLock, Timeout

    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / "state.lock"))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise SandboxError(f"another sandbox command holds {directory / 'state.lock'} for over {timeout:.0f}s") from None
    try:
        yield
    finally:
        lock.release()


def service_available() -> bool:
    return runnable(SERVICE_MODULE)


def faults_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    raw = (os.environ if environ is None else environ).get(FAULTS_ENV, "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def parse_fault_args(pairs: Sequence[str]) -> dict[str, Any]:
    """Validate KNOB=VALUE pairs with the service's own parser (one definition of the knobs)."""
    for pair in pairs:
        if "=" not in pair:
            raise FaultError(f"fault {pair!r} is not KNOB=VALUE (e.g. error_rate=0.3)")
    if not pairs:
        return {}
    try:
        from .service.faults import parse_faults  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise SandboxError(f"cannot validate faults: {SERVICE_MODULE}.faults is missing ({exc})") from None
    try:
        parsed = parse_faults(list(pairs))
    except (ValueError, KeyError, TypeError) as exc:
        raise FaultError(f"bad fault in {' '.join(pairs)}: {exc}") from None
    return _as_dict(parsed)


def _as_dict(parsed: Any) -> dict[str, Any]:
    if isinstance(parsed, Mapping):
        return dict(parsed)
    for attr in ("model_dump", "to_dict", "as_dict"):
        if hasattr(parsed, attr):
            return dict(getattr(parsed, attr)())
    if hasattr(parsed, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(parsed)
    return dict(vars(parsed))


def _service_argv(release: str, port: int, state_dir: Path, pairs: Sequence[str]) -> list[str]:
    argv = python_module(SERVICE_MODULE, "--release", release, "--port", str(port), "--state-dir", str(state_dir))
    for pair in pairs:
        argv += ["--fault", pair]
    return argv


def _service_markers(release: str, state_dir: Path) -> list[str]:
    return [SERVICE_MODULE, "--release", release, str(state_dir)]


def release_running(state: SandboxState, release: str) -> bool:
    entry = state.versions.get(release) or {}
    return pid_matches(entry.get("pid"), entry.get("markers") or _service_markers(release, state.directory))


def start_service(state: SandboxState, release: str, pairs: Sequence[str], port: int | None = None,
                  timeout: float = 30.0) -> dict[str, Any]:
    """Start release's process (on ``port`` when given: its Lambda versions already point there)."""
    if not service_available():
        raise SandboxError(f"cannot start release {release}: module {SERVICE_MODULE} is not installed")
    log_path = state.directory / "logs" / f"service-{release}.log"
    attempts = 1 if port else 3
    last: SandboxError | None = None
    for _attempt in range(attempts):
        chosen = port or free_port()
        argv = _service_argv(release, chosen, state.directory, pairs)
        proc = spawn(argv, log_path, child_env(state.directory))
        url = f"http://127.0.0.1:{chosen}"
        try:
            # Any answer from /health means the process serves; a "crash" fault makes it answer 503.
            wait_until(partial(http_answers, url + "/health"), timeout, f"release {release} on {url}",
                       proc=proc, log_path=log_path)
        except SandboxError as exc:
            last = exc
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            continue
        return {"pid": proc.pid, "port": chosen, "url": url, "cmd": argv, "log": str(log_path),
                "markers": _service_markers(release, state.directory)}
    raise last or SandboxError(f"release {release} did not start")


def _backend_environment(state: SandboxState, release: str, url: str) -> dict[str, str]:
    # The sandbox's DSN/URL carry no password (trust auth on loopback): safe in a Lambda config.
    return {"LLAMA_BACKEND_URL": url, RELEASE_VARIABLE: release,
            "DATABASE_URL": state.postgres_dsn, "REDIS_URL": state.redis_url}


def publish_versions(state: SandboxState, release: str, url: str) -> dict[str, str]:
    """Publish one version per function, each naming its release twice over (the deploy contract the
    gate checks before adopting a version: README, "Pointing it at a real AWS account")."""
    lam = sandbox_aws(state).client("lambda")
    versions: dict[str, str] = {}
    for function in FUNCTIONS:
        lam.update_function_configuration(
            FunctionName=function, Environment={"Variables": _backend_environment(state, release, url)},
            Description=f"release {release}",
        )
        published = lam.publish_version(FunctionName=function, Description=f"release {release}")
        versions[function] = str(published["Version"])
    return versions


def deploy_release(directory: Path, release: str, pairs: Sequence[str]) -> tuple[dict[str, str], bool]:
    """Start (or reuse) release's process and publish its Lambda versions.

    Returns (function -> version, whether anything was published now). Idempotent: a
    release already running with published versions gets its faults updated, nothing more.
    """
    faults = parse_fault_args(pairs)
    with state_lock(directory):
        state = SandboxState.load(directory)
        return deploy_locked(state, release, pairs, faults)


def deploy_locked(state: SandboxState, release: str, pairs: Sequence[str],
                  faults: Mapping[str, Any]) -> tuple[dict[str, str], bool]:
    """``deploy_release`` for a caller that already holds the state lock (``sandbox up``)."""
    entry = dict(state.versions.get(release) or {})
    published = entry.get("lambda_versions") or {}
    if release_running(state, release):
        if faults:
            post_faults(entry["url"], faults)
            entry["faults"] = {**(entry.get("faults") or {}), **faults}
    else:
        # A crashed release comes back on its old port: its published versions point there.
        entry.update(start_service(state, release, pairs, port=entry.get("port") if published else None))
        entry["faults"] = dict(faults)
        entry.setdefault("started_at", time.time())
    fresh = not all(f in published for f in FUNCTIONS)
    if fresh:
        state.versions[release] = entry  # recorded before publishing: a failure leaves the PID known
        state.save()
        published = publish_versions(state, release, entry["url"])
    entry["lambda_versions"] = published
    state.versions[release] = entry
    state.save()
    return dict(published), fresh


def post_faults(url: str, faults: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.post(f"{url}/_sandbox/faults", json=dict(faults), timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        raise SandboxError(f"POST {url}/_sandbox/faults failed: {exc}") from None
    if response.status_code == 400 or response.status_code == 422:
        raise FaultError(f"the service at {url} rejected faults {dict(faults)}: {response.text[:500]}")
    if response.status_code >= 300:
        raise SandboxError(f"POST {url}/_sandbox/faults answered {response.status_code}: {response.text[:500]}")
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def set_faults(directory: Path, release: str, pairs: Sequence[str]) -> dict[str, Any]:
    """Change a running release's faults live; returns the faults now recorded for it."""
    faults = parse_fault_args(pairs)
    if not faults:
        raise FaultError("no faults given: pass KNOB=VALUE pairs, e.g. error_rate=0.3")
    with state_lock(directory):
        state = SandboxState.load(directory)
        if release not in state.versions or not release_running(state, release):
            known = ", ".join(sorted(state.versions)) or "none"
            raise SandboxError(f"release {release} is not running in {directory} (running: {known}); "
                               f"deploy it first with `llamadeploy sandbox deploy --release {release}`")
        entry = state.versions[release]
        post_faults(entry["url"], faults)
        entry["faults"] = {**(entry.get("faults") or {}), **faults}
        state.save()
        return dict(entry["faults"])


def clear_faults(state: SandboxState, release: str) -> None:
    """Back to no faults (the service merges what it is sent, so send every knob's default)."""
    from .service.faults import defaults  # type: ignore[import-not-found,unused-ignore]

    entry = state.versions[release]
    post_faults(entry["url"], defaults())
    entry["faults"] = {}
