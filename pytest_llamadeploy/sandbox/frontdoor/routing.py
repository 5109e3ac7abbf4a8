"""Lambda alias routing as the front door sees it: moto is the single source of truth.

Each API Gateway stage of the front door calls its functions through an alias
(``live`` for users, ``preview`` for the release under test at 0 %): the stage
variable ``lambdaAlias`` of AWS.md. The aliases (primary version +
``AdditionalVersionWeights``) are re-read in a background thread every
``refresh_interval`` with one ListAliases call per function, so a weight change
made with ``update_alias`` reaches the traffic within about a second, as on AWS,
without a moto round trip on the request path. A version's backend URL comes
from that version's configuration (``LLAMA_BACKEND_URL``); published versions are
immutable, so it is cached until the backend proves unreachable.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("llamadeploy.frontdoor")

BACKEND_ENV_VAR = "LLAMA_BACKEND_URL"
RELEASE_ENV_VAR = "LLAMA_RELEASE"


class UnknownVersion(LookupError):
    """The function has no such version (or it has no backend URL in its environment)."""


class AliasUnavailable(RuntimeError):
    """The alias has never been read (moto down at start, or the alias does not exist yet)."""


@dataclass(frozen=True)
class AliasView:
    function: str
    primary: str
    #: Additional versions and their shares of traffic (the primary gets the rest).
    weights: dict[str, float] = field(default_factory=dict)
    fetched_at: float = 0.0

    def pick(self, rng: random.Random | None = None) -> str:
        """A version drawn with the alias weights, as Lambda does per invocation."""
        r = (rng or random).random()
        cumulative = 0.0
        for version, weight in sorted(self.weights.items()):
            cumulative += weight
            if r < cumulative:
                return version
        return self.primary


def alias_view_from_response(function: str, response: dict[str, Any], fetched_at: float) -> AliasView:
    weights = (response.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    return AliasView(
        function=function,
        primary=str(response["FunctionVersion"]),
        weights={str(v): float(w) for v, w in weights.items() if float(w) > 0},
        fetched_at=fetched_at,
    )


@dataclass(frozen=True)
class Backend:
    function: str
    version: str
    url: str
    release: str


class Router:
    """Alias views (refreshed in the background) and version -> backend resolution."""

    def __init__(self, lambda_client: Any, functions: list[str], aliases: tuple[str, ...] = ("live",),
                 refresh_interval: float = 1.0):
        self._client = lambda_client
        self.functions = list(functions)
        self.aliases = tuple(aliases)
        self.refresh_interval = refresh_interval
        self._views: dict[tuple[str, str], AliasView] = {}
        self._backends: dict[tuple[str, str], Backend] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: dict[str, str] = {}

    # -- alias -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read every function's aliases once; keep the last good views when moto does not answer."""
        for function in self.functions:
            try:
                found = self._client.list_aliases(FunctionName=function).get("Aliases", [])
                now = time.time()
                views = {(function, a["Name"]): alias_view_from_response(function, a, now)
                         for a in found if a.get("Name") in self.aliases}
            except Exception as exc:  # moto down: route with what we had
                message = f"{type(exc).__name__}: {exc}"
                if self._last_error.get(function) != message:
                    log.warning("cannot read the aliases of %s (%s); keeping the last known routing", function, message)
                self._last_error[function] = message
                continue
            self._last_error.pop(function, None)
            with self._lock:
                for alias in self.aliases:  # an alias deleted since is no route any more
                    self._views.pop((function, alias), None)
                self._views.update(views)
            # Resolve the backends of versions now in use off the request path.
            for view in views.values():
                for version in {view.primary, *view.weights}:
                    if (function, version) not in self._backends:
                        try:
                            self.backend(function, version)
                        except Exception as exc:
                            log.warning("cannot resolve %s:%s: %s", function, version, exc)

    def view(self, function: str, alias: str) -> AliasView:
        with self._lock:
            view = self._views.get((function, alias))
        if view is None:
            detail = self._last_error.get(function, "no such alias")
            raise AliasUnavailable(f"alias {function}:{alias} is not readable from the AWS endpoint ({detail})")
        return view

    def views(self) -> dict[tuple[str, str], AliasView]:
        with self._lock:
            return dict(self._views)

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="alias-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self.refresh()

    # -- versions ----------------------------------------------------------------------
    def backend(self, function: str, version: str) -> Backend:
        """The backend serving ``function:version`` (blocking: moto is asked on a cache miss)."""
        key = (function, version)
        cached = self._backends.get(key)
        if cached is not None:
            return cached
        if not version.isdigit() and version != "$LATEST":
            raise UnknownVersion(f"{function} has no version {version!r}: a version is a number such as 3")
        try:
            config = self._client.get_function_configuration(FunctionName=function, Qualifier=version)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("ResourceNotFoundException", "404"):
                raise UnknownVersion(f"{function} has no version {version}") from None
            raise
        variables = (config.get("Environment") or {}).get("Variables") or {}
        url = variables.get(BACKEND_ENV_VAR)
        if not url:
            raise UnknownVersion(
                f"{function}:{version} has no {BACKEND_ENV_VAR} in its environment; "
                f"publish versions with `llamadeploy sandbox deploy`")
        backend = Backend(function, version, url.rstrip("/"), variables.get(RELEASE_ENV_VAR, ""))
        self._backends[key] = backend
        return backend

    def forget(self, function: str, version: str) -> None:
        """Drop a cached backend (it was unreachable: re-read its configuration next time)."""
        self._backends.pop((function, version), None)
