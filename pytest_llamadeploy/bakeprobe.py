"""The bake watch's probes of the new version: active checks where organic traffic is thin.

At shift10 the new version gets a tenth of the traffic: a few requests a second, a
handful of cache misses, one or two WebSocket subscribers. The probes add samples
that do not wait for users, rotating over ``watch.checks``:

- ``path``: one Lambda invoke of the new API version (``Qualifier=N``, an API
  Gateway proxy event, as CodeDeploy's PreTraffic hooks do) of ``watch.probe_path``;
- ``cache``: a cached key read twice through the new version, the first read fresh
  (``Cache-Control: no-cache``: the database is read and the key rewritten), the
  second must come from the cache (``x-cache: hit``). It fails a release that
  bypasses the cache, and each fresh read is a database-time sample of the new
  version (service.db_time), which organic traffic, mostly cache hits, rarely gives;
- ``event``: a subscriber on the preview WebSocket stage (the new version of the
  WebSocket function), a test event published through the new API version, and the
  event must reach the subscriber within ``watch.probe_timeout``. The event goes to
  ``watch.probe_event_chain``, a chain no alert rule and no functional test uses
  (docs/service-contract.md).

Each ``path`` and ``cache`` probe is mirrored on the old version: probes add load,
and load on one side only would make the new version look slower than it is (seen
in the sandbox: 1.5-3x at shift50), and the ``baseline: old`` triggers compare the
two over the same seconds. A probe the new version did not answer at all is
checked against the old version at once (:func:`attribute_probe`): ``None`` means
neither answered, the probe path failed, not the release.

Every probe returns ``(ok, detail, check)``; the watch keeps one failure-ratio rule
per check (metrics/watch.py).

A team adds checks of its own through ``pytest_llamadeploy_probe_checks`` (newhooks.py):
a :class:`ProbeCheck` runs where ``watch.checks`` names it, in the same rotation, and is
its own trigger ``<name>_probe_failure_ratio`` on the new version of its function.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ProbeOutcome = tuple[bool | None, str, str]

#: The cached key the cache check reads (an endpoint of docs/service-contract.md).
CACHE_CHECK_PATH = "/chains"
#: The checks that ship with llamadeploy (policy ``watch.checks``).
BUILTIN_CHECKS = ("path", "cache", "event")
_CHECK_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclass(frozen=True)
class ProbeTarget:
    """What a plugin's check probes: the new version of one function (the old one to compare with)."""

    function: str
    version: str
    old_version: str | None
    #: The stage (pytest_llamadeploy.context.StageContext): ``client(...)``, ``resolved_targets``, ``release``.
    context: Any
    timeout: float
    lambda_client: Any

    def invoke(self, path: str, version: str | None = None, *, method: str = "GET",
               headers: dict[str, str] | None = None, body: str | None = None) -> Any:
        """One Lambda invoke of ``version`` (default: the new one) with an API Gateway proxy event: a ProbeResult."""
        from .probe import probe_http

        return probe_http(self.context.resolved_targets, path, version=version or self.version, timeout=self.timeout,
                          function=self.function, lambda_client=self.lambda_client, method=method,
                          headers=headers, body=body)


@dataclass(frozen=True)
class ProbeCheck:
    """An active check a plugin contributes (``pytest_llamadeploy_probe_checks``, newhooks.py)."""

    name: str
    #: ``run(target) -> (ok, detail)``: True passed, False failed, None the probe path failed (not counted).
    run: Callable[[ProbeTarget], tuple[bool | None, str]]
    #: The function whose new version it checks (default ``service.api_function``).
    function: str = ""
    description: str = ""


def plugin_checks(answers: Iterable[Any], policy: Any) -> dict[str, ProbeCheck]:
    """The plugins' checks by name, validated against the policy; ValueError lists every problem."""
    problems: list[str] = []
    checks: dict[str, ProbeCheck] = {}
    for answer in answers:
        for check in answer or []:
            if not isinstance(check, ProbeCheck):
                problems.append(f"a probe check must be a pytest_llamadeploy.bakeprobe.ProbeCheck, got {check!r}")
            elif not _CHECK_NAME.fullmatch(check.name) or check.name in BUILTIN_CHECKS:
                problems.append(f"probe check {check.name!r}: a name is a-z, 0-9 and '_' (up to 40, a letter first) "
                                f"and none of the built-in {', '.join(BUILTIN_CHECKS)}")
            elif check.name in checks:
                problems.append(f"probe check {check.name!r} is contributed twice (by two plugins?): rename one")
            elif check.function and check.function not in policy.service.functions:
                problems.append(f"probe check {check.name!r}: function {check.function!r} is not one of "
                                f"service.functions ({', '.join(policy.service.functions)})")
            else:
                checks[check.name] = check
    for name in policy.watch.checks:
        if name not in BUILTIN_CHECKS and name not in checks:
            problems.append(f"watch.checks names {name!r}, which is neither built in ({', '.join(BUILTIN_CHECKS)}) "
                            f"nor contributed by a plugin (pytest_llamadeploy_probe_checks: "
                            f"{', '.join(checks) or 'none'}): fix the name or install the plugin")
    if problems:
        raise ValueError("\n".join(problems))
    return checks


def bake_probe(context: Any, policy: Any, plugins: Mapping[str, ProbeCheck] | None = None
               ) -> Callable[[], ProbeOutcome] | None:
    """The watch's probe of the new version (None if no API version is new)."""
    fn = policy.service.api_function
    version = context.new_versions.get(fn)
    old = context.old_versions.get(fn)
    if not version or version == old:
        return None
    return BakeProbes(context, policy, str(version), str(old) if old else None, plugins)


class BakeProbes:
    """Callable: each call runs the next check of ``watch.checks`` once (see the module docstring)."""

    def __init__(self, context: Any, policy: Any, version: str, old: str | None,
                 plugins: Mapping[str, ProbeCheck] | None = None) -> None:
        self.policy = policy
        self.fn = policy.service.api_function
        self.version, self.old = version, old
        self.targets = context.resolved_targets
        self.release = getattr(context, "release", None)
        # One attempt per probe: each is a sample, and botocore must not retry a throttle into a success.
        self.lambda_client = context.client("lambda", max_attempts=1)
        ws_new = context.new_versions.get(policy.service.ws_function)
        ws_old = context.old_versions.get(policy.service.ws_function)
        checks = list(policy.watch.checks)
        #: Why a check of ``watch.checks`` does not run in this bake (shown in the watch's evidence).
        self.skipped: dict[str, str] = {}
        if "event" in checks:
            why = ("this release publishes no new WebSocket version" if not ws_new or ws_new == ws_old else
                   "no preview WebSocket stage (targets.preview_ws_url)" if not self.targets.preview_ws_url else
                   self._preview_points_elsewhere(policy, str(ws_new)))
            if why:
                checks.remove("event")
                self.skipped["event"] = why
        #: The plugins' checks this bake runs, and each one's (trigger, function) for the watch.
        self.plugins: dict[str, tuple[ProbeCheck, ProbeTarget]] = {}
        self.plugin_rules: dict[str, tuple[str, str]] = {}
        for name, check in (plugins or {}).items():
            if name not in checks:
                continue
            target_fn = check.function or self.fn
            new, was = context.new_versions.get(target_fn), context.old_versions.get(target_fn)
            if not new or new == was:
                checks.remove(name)
                self.skipped[name] = f"this release publishes no new version of {target_fn}"
                continue
            self.plugins[name] = (check, ProbeTarget(
                function=target_fn, version=str(new), old_version=str(was) if was else None, context=context,
                timeout=float(policy.watch.probe_timeout), lambda_client=self.lambda_client))
            self.plugin_rules[name] = (f"{name}_probe_failure_ratio", target_fn)
        for name in [c for c in checks if c not in BUILTIN_CHECKS and c not in self.plugins]:
            checks.remove(name)
            self.skipped.setdefault(name, "no plugin contributes it (pytest_llamadeploy_probe_checks)")
        self.checks = checks or ["path"]
        self.turn = 0
        self._token: tuple[str, float] | None = None
        self._rng = random.Random()

    def _preview_points_elsewhere(self, policy: Any, ws_new: str) -> str:
        """'' when the preview alias serves the new WebSocket version (so its subscriber tests it)."""
        fn, alias = policy.service.ws_function, policy.service.preview_alias
        try:
            serving = self.lambda_client.get_alias(FunctionName=fn, Name=alias)
        except Exception as exc:  # noqa: BLE001 - no event check rather than one of the wrong version
            return f"could not read alias {fn}:{alias}: {type(exc).__name__}"
        weights = (serving.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        if str(serving.get("FunctionVersion")) != ws_new or weights:
            return f"alias {fn}:{alias} does not serve version {ws_new} alone"
        return ""

    def __call__(self) -> ProbeOutcome:
        check = self.checks[self.turn % len(self.checks)]
        self.turn += 1
        if check in self.plugins:
            return self.plugin(check)
        try:
            if check == "event":
                return self.event()
            ok, detail = self.cache() if check == "cache" else self.path()
        except OSError as exc:  # no token: the new API version's /auth/token failed (or Lambda throttled it)
            return False, f"{check} check: {exc}", "path"
        return ok, detail, check

    # -- the checks -----------------------------------------------------------------------

    def plugin(self, name: str) -> ProbeOutcome:
        """A plugin's check, once: what it raises is a failed check of its own (not of ``path``)."""
        check, target = self.plugins[name]
        try:
            ok, detail = check.run(target)
        except Exception as exc:  # noqa: BLE001 - a check that raises has failed
            return False, f"{name} check: {type(exc).__name__}: {exc}", name
        return ok, f"{name} check: {detail}", name

    def _invoke(self, version: str, path: str, **kwargs: Any) -> Any:
        from .probe import probe_http

        return probe_http(self.targets, path, version=version, timeout=self.policy.watch.probe_timeout,
                          function=self.fn, lambda_client=self.lambda_client, **kwargs)

    def path(self) -> tuple[bool | None, str]:
        result = self._invoke(self.version, self.policy.watch.probe_path)
        control = self._invoke(self.old, self.policy.watch.probe_path) if self.old else None
        return attribute_probe(result, control)

    def cache(self) -> tuple[bool | None, str]:
        outcome = self._read_twice(self.version)
        if self.old:
            self._read_twice(self.old)  # the mirror: same load, and the old version's database time
        return outcome

    def _read_twice(self, version: str) -> tuple[bool | None, str]:
        auth = {"authorization": f"Bearer {self._bearer()}"}
        fresh = self._invoke(version, CACHE_CHECK_PATH, headers={**auth, "cache-control": "no-cache"})
        if not fresh.ok:
            control = self._invoke(self.old, CACHE_CHECK_PATH, headers=auth) if self.old and version != self.old else None
            return attribute_probe(fresh, control)
        cached = self._invoke(version, CACHE_CHECK_PATH, headers=auth)
        if not cached.ok:
            return attribute_probe(cached, None)
        answer = cached.headers.get("x-cache", "")
        if answer != "hit":
            return False, (f"cache check: {cached.describe()}: x-cache {answer or '(absent)'} right after a fresh "
                           "read wrote the key; a cached read must be a hit")
        return True, f"cache check: {fresh.describe()}, then {cached.describe()}: x-cache hit"

    def event(self) -> ProbeOutcome:
        """A test event published through the new API version, timed to a subscriber on the new WebSocket version.

        A publish the new API version fails is the API's failure (check ``path``), not the
        WebSocket version's: the trigger names the function that failed.
        """
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        from .redact import redact

        timeout = float(self.policy.watch.probe_timeout)
        url = self.targets.require("preview_ws_url")
        where = f"event check: subscriber on {redact(url)} (the preview stage)"
        started = time.monotonic()
        try:
            with connect(url, open_timeout=timeout, close_timeout=1) as ws:
                _until(ws, lambda m: m.get("type") == "hello", started + timeout)
                ws.send(json.dumps({"action": "subscribe", "channel": "tvl"}))
                _until(ws, lambda m: m.get("type") == "subscribed", started + timeout)
                token = self._bearer()
                body = json.dumps({"chain": self.policy.watch.probe_event_chain,
                                   "tvl": round(self._rng.uniform(1e6, 2e6), 2)})
                published = self._invoke(self.version, "/events/tvl", method="POST", body=body,
                                         headers={"authorization": f"Bearer {token}",
                                                  "content-type": "application/json"})
                event_id = published.body.get("id") if isinstance(published.body, dict) else None
                if not published.ok or not event_id:
                    return attribute_probe(published, None)[0], f"event check: publish: {published.describe()}", "path"
                sent = time.monotonic()
                got = _until(ws, lambda m: m.get("type") == "event" and m.get("id") == event_id, sent + timeout)
        except TimeoutError:
            return False, f"{where}: no answer within {timeout:g} s", "event"
        except (OSError, WebSocketException) as exc:
            return False, f"{where}: {type(exc).__name__}: {redact(str(exc))}", "event"
        if got is None:
            return False, (f"{where}: event {event_id} published through {self.fn} version {self.version} "
                           f"was not delivered within {timeout:g} s"), "event"
        return True, f"{where}: event {event_id} delivered in {(time.monotonic() - sent) * 1000:.1f} ms", "event"

    def _bearer(self) -> str:
        """A token from the service's own ``POST /auth/token`` (kept until a minute before it expires)."""
        if self._token and self._token[1] - time.time() > 60:
            return self._token[0]
        answer = self._invoke(self.version, "/auth/token", method="POST",
                              body=json.dumps({"user": "llamadeploy-probe"}),
                              headers={"content-type": "application/json"})
        body = answer.body if isinstance(answer.body, dict) else {}
        if not answer.ok or "token" not in body:
            raise OSError(f"no token: {answer.describe()}")
        self._token = (str(body["token"]), float(body.get("expires_at") or time.time() + 300))
        return self._token[0]


def _until(ws: Any, wanted: Callable[[dict[str, Any]], bool], deadline: float) -> dict[str, Any] | None:
    """Read messages until one is ``wanted`` (returned) or the deadline passes (None)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            raw = ws.recv(timeout=left)
        except TimeoutError:
            return None
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        if isinstance(message, dict) and wanted(message):
            return message


def attribute_probe(result: Any, control: Any | None) -> tuple[bool | None, str]:
    """The watch's reading of one probe of the new version, given the old version's (or None).

    - answered: ok or failed as answered (a 5xx, a wrong release);
    - no answer, and the old version answered: the new version failed;
    - no answer from either: ``None``, the probe path failed, not the release;
    - no answer and no old version to ask: failed (nothing clears the release).
    """
    if result.status is not None or result.ok or getattr(result, "throttled", False):
        # A Lambda throttle is an answer of Lambda's: the watch counts it as a throttle.
        return result.ok, result.describe()
    if control is not None and control.status is None:
        return None, (f"{result.describe()}; the old version gave no answer either ({control.error}): "
                      "the probe path failed, not the release")
    if control is not None:
        return False, f"{result.describe()}; the old version answered HTTP {control.status}"
    return False, result.describe()
