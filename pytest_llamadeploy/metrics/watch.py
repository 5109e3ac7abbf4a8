"""The bake watch: rollback triggers polled in the background, with immediate rollback.

From the moment traffic moves, a thread polls the policy's ``rollback_triggers``
every ``watch.interval`` with ONE GetMetricData call per poll (all triggers x
functions x old and new version), and a second thread probes the new version
directly at ``watch.probe_rate`` per second. The first breach from either
source calls ``on_breach`` at once (the stage rolls back inside it); the bake
does not run to its end first.

What triggers, and from which version:
- a trigger rule failing on the new version, or on a service-wide signal
  (API Gateway 5xx) - the old version's values are shown, never acted on;
- a ``wait`` rule still short of ``min_samples`` after ``no_data_grace`` since its
  window's first data could have arrived, or at the final decision: "inconclusive"
  (never a pass);
- ``provider_error_limit`` GetMetricData failures in a row: "metrics unavailable";
- probes (source "probe"), one rule per active check (bakeprobe.py: ``path`` ->
  probe_failure_ratio, ``cache`` -> cache_probe_failure_ratio, ``event`` ->
  event_probe_failure_ratio): among the last 10 checks of that kind on the new
  version, at least 2 failed and the failure ratio exceeds the error-rate trigger's bound (5 %). Two
  failures, not one, so that a single lost packet does not roll a release back; 2
  of at most 10 is >= 20 %, far above 5 %, so a real fault is not missed. A probe
  throttled by Lambda (TooManyRequestsException) is counted as a throttle, left to
  the throttle-rate trigger; an application's HTTP 429 is a failed probe. A probe
  may also come back "unattributed" (``ok is None``): the new version gave no
  answer and neither did the old one probed the same way at once, so the probe
  path (this host, the network, an overloaded front door) failed, not the
  release. Those are counted and shown, never in the rule's window.

Observed, not acted on (Argo Rollouts' ``dryRun``): with ``observe`` (``--observe``) every breach,
and with a rule's ``observe: true`` that rule's breaches, are recorded (``observed``: the first of
each rule, version and function, with how many polls saw it) and reported, and ``on_breach`` is not
called: the watch goes on to the end of the bake, so every rule is evaluated over the whole bake.

Physics (../shared/AWS.md, policy ``metrics:``): every window ends where its
source's data has arrived (``now - lag``). The functions' EMF signal (per version,
1-s resolution, seconds late) is what decides within a bake; AWS's own metrics
(60-s datapoints, minutes late on AWS) are the second line, and during a 5-minute
bake on AWS they cover only the bake's first minutes. At the end of the bake the
windows end at the deadline and the final decision waits - still acting on any
breach - until each rule's last bucket has arrived or the longest lag has passed:
a late minute is waited for, not turned into "inconclusive". Probes are
version-targeted and counted by the watch itself, apart from CloudWatch.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .. import metricnames as mn
from ..units import format_duration
from .evaluate import (
    ALL,
    RuleResult,
    arrived,
    evaluate_plan,
    max_lag,
    plan_poll,
    plan_targets,
    settle_all,
    target_specs,
)
from .providers import provider_of
from .query import ProviderError, QueryError, SeriesSpec
from .signals import format_value, get_signal

BreachKind = Literal["threshold", "inconclusive", "probe", "provider"]
#: A probe of the new version: (True ok | False failed | None unattributed, detail[, check]).
ProbeFn = Callable[[], tuple[bool | None, str] | tuple[bool | None, str, str]]
OutFn = Callable[[str, bool], None]

#: The probe rule (see the module docstring).
PROBE_WINDOW = 10
PROBE_MIN_FAILURES = 2
_DEFAULT_PROBE_BOUND = 0.05
#: Each active check (bakeprobe.py) is its own trigger, on the function it exercises.
PROBE_RULES = {"path": ("probe_failure_ratio", "api"), "cache": ("cache_probe_failure_ratio", "api"),
               "event": ("event_probe_failure_ratio", "ws")}
#: How ``ProbeResult.describe()`` shows a Lambda throttle (Invoke's TooManyRequestsException). An
#: application's own HTTP 429 is an answer, and fails a probe that expects 200.
_THROTTLED = re.compile(r"\bthrottled: TooManyRequestsException\b")


@dataclass
class Breach:
    kind: BreachKind
    rule: str
    signal: str
    value: float | None
    threshold: float | None
    op: str
    window: float
    #: Lambda version the breach was seen on ("" for a service-wide signal).
    version: str
    source: Literal["cloudwatch", "probe"]
    message: str
    function: str = ""
    #: "new", "old" or "all".
    label: str = ""
    samples: float = 0.0
    at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.message


@dataclass
class _Probe:
    at: float
    ok: bool
    detail: str
    seconds: float


@dataclass
class _Counters:
    calls: int = 0
    polls: int = 0
    provider_errors: int = 0
    consecutive_provider_errors: int = 0
    max_consecutive_provider_errors: int = 0
    last_provider_error: str = ""
    poll_seconds: list[float] = field(default_factory=list)


class BakeWatch:
    """Background watch of one bake; see the module docstring for what triggers."""

    def __init__(
        self,
        cloudwatch: Any,
        policy: Any,
        functions: list[str],
        alias: str,
        old_versions: Mapping[str, str],
        new_versions: Mapping[str, str],
        started_at: float,
        probe: ProbeFn | None,
        on_breach: Callable[[Breach], None],
        out: OutFn | None = None,
        *,
        clock: Callable[[], float] = time.time,
        baseline: bool = True,
        observe: bool = False,
    ) -> None:
        #: Who answers each source's series (providers.py): a stage passes its router (plugins' providers
        #: included); a CloudWatch client is wrapped with the policy's declared sources.
        self.provider = provider_of(cloudwatch, policy)
        self.cloudwatch = getattr(self.provider, "cloudwatch", cloudwatch)
        self.policy = policy
        self.functions = list(functions)
        self.alias = alias
        self.versions = {"new": dict(new_versions), "old": dict(old_versions)}
        self.started_at = started_at
        self.probe = probe
        self.on_breach = on_breach
        self.out = out or (lambda line, same_line: None)
        self.clock = clock
        #: Every breach observed only (``--observe``); a rule's own ``observe: true`` does it for that rule.
        self.observe = observe
        # ``baseline: old`` rules compare two versions serving side by side (a shift); at a
        # promote or a rollback one of them has no traffic left to compare with.
        self.rules = {name: rule for name, rule in policy.rollback_triggers.items() if baseline or not rule.baseline}
        for name, rule in self.rules.items():
            get_signal(rule.signal, f"rollback_triggers.{name}", policy)  # a typo fails before traffic is watched
        self.interval = float(policy.watch.interval)
        self.resolution = int(policy.metrics.service.resolution)
        #: How long past the bake's end the final decision may wait for the bake's last data.
        self.final_wait = max(max_lag(policy, self.rules), max_lag(policy, policy.key_metrics))
        self.probe_bound = next(
            (r.threshold for r in self.rules.values() if r.signal == "lambda.error_rate"), _DEFAULT_PROBE_BOUND)

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._finished = threading.Event()
        self._deadline: float | None = None
        self._breach: Breach | None = None
        self._breach_fired = False
        self._on_breach_error = ""
        self._counters = _Counters()
        self._polls: list[dict[str, Any]] = []
        #: (rule, label, function) of every value judged on enough samples at least once in this bake.
        self._assessed: set[tuple[str, str, str]] = set()
        #: (rule, label, function) of the rollback triggers the previous final poll found failing (see ``poll``).
        self._final_failing: set[tuple[str, str, str]] = set()
        self._last_results: list[RuleResult] = []
        self._series: dict[str, Any] = {}
        self._probes: dict[str, deque[_Probe]] = {}
        self._probe_total = 0
        self._probe_failed = 0
        self._probe_throttled = 0
        self._probe_unattributed = 0
        self._probe_failures: list[dict[str, Any]] = []
        #: Breaches observed and not acted on: (rule, label, function) -> the first one, with a count of polls.
        self._observed: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._threads: list[threading.Thread] = []
        self._hook_id = f"llamadeploy-watch-{id(self)}"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._threads:
            return
        try:
            self.cloudwatch.meta.events.register(
                "before-call.cloudwatch.GetMetricData", self._count_call, unique_id=self._hook_id)
        except AttributeError:
            pass  # a stub client in a unit test: calls are counted in fetch() instead
        self._threads.append(threading.Thread(target=self._run, name="llamadeploy-watch", daemon=True))
        if self.probe is not None and self.policy.watch.probe_rate > 0:
            self._threads.append(threading.Thread(target=self._run_probes, name="llamadeploy-probe", daemon=True))
        for thread in self._threads:
            thread.start()

    def wait(self, bake_seconds: float) -> Breach | None:
        """Block until the bake ends (None: passed) or a breach/inconclusive verdict (returned at once)."""
        if not self._threads:
            raise RuntimeError("BakeWatch.wait() before start()")
        self._deadline = self.started_at + bake_seconds
        self._wake.set()
        # Past the deadline the final poll may still retry provider errors: allow for that, then give up loudly.
        limit = self._deadline + self.final_wait + (self.policy.watch.provider_error_limit + 2) * (self.interval + 30.0)
        while not self._finished.wait(timeout=0.2):
            # The thread may have finished (with its verdict) between the wait and this check.
            if (self.clock() > limit or not self._threads[0].is_alive()) and not self._finished.is_set():
                self._fire(Breach("inconclusive", "watch", "", None, None, "", bake_seconds, "", "cloudwatch",
                                  "inconclusive: the metrics watch stopped without a verdict "
                                  f"(last provider error: {self._counters.last_provider_error or 'none'})"))
                break
        return self._breach

    def stop(self) -> None:
        """Stop both threads and join them (idempotent)."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(5.0, self.policy.watch.probe_timeout + 2.0))
        try:
            self.cloudwatch.meta.events.unregister(
                "before-call.cloudwatch.GetMetricData", unique_id=self._hook_id)
        except AttributeError:
            pass

    @property
    def breach(self) -> Breach | None:
        return self._breach

    # ------------------------------------------------------------ evidence

    def evidence(self) -> dict[str, Any]:
        """JSON-able record of the watch for the report and the ledger."""
        c = self._counters
        with self._lock:
            probes = {"count": self._probe_total, "failed": self._probe_failed, "throttled": self._probe_throttled,
                      "unattributed": self._probe_unattributed,
                      # Active checks of watch.checks that did not run, and why (bakeprobe.py).
                      "skipped": dict(getattr(self.probe, "skipped", {}) or {}),
                      "failures": list(self._probe_failures[-20:]),
                      "rule": f"per check ({', '.join(getattr(self.probe, 'checks', None) or PROBE_RULES)}), "
                              f"last {PROBE_WINDOW}: >= {PROBE_MIN_FAILURES} failed and ratio > "
                              f"{self.probe_bound * 100:g}%"}
            return {
                "started_at": self.started_at,
                "deadline": self._deadline,
                "interval": self.interval,
                "resolution": self.resolution,
                "versions": self.versions,
                "polls": list(self._polls),
                "series": self._series,
                "last_results": [r.to_json() for r in self._last_results],
                "get_metric_data_calls": c.calls,
                "poll_count": c.polls,
                "poll_seconds": {"max": max(c.poll_seconds, default=0.0),
                                 "mean": sum(c.poll_seconds) / len(c.poll_seconds) if c.poll_seconds else 0.0},
                "provider_errors": c.provider_errors,
                "max_consecutive_provider_errors": c.max_consecutive_provider_errors,
                "last_provider_error": c.last_provider_error,
                "probes": probes,
                "breach": self._breach.to_json() if self._breach else None,
                "on_breach_error": self._on_breach_error,
                "observe": self.observe,
                "observed_rules": sorted(n for n, r in self.rules.items() if getattr(r, "observe", False)),
                "observed": [dict(o) for o in self._observed.values()],
            }

    @property
    def observed(self) -> list[dict[str, Any]]:
        """Breaches observed and not acted on (see the module docstring), first seen first."""
        with self._lock:
            return [dict(o) for o in self._observed.values()]

    def observes(self, rule: str) -> bool:
        """Is a breach of ``rule`` observed only (``--observe``, or the rule's ``observe: true``)?"""
        spec = self.rules.get(rule)
        return self.observe or bool(getattr(spec, "observe", False))

    # ------------------------------------------------------------ internals

    def _count_call(self, **_kwargs: Any) -> None:
        with self._lock:
            self._counters.calls += 1

    def _fire(self, breach: Breach) -> bool:
        """Act on ``breach`` (True), or, when its rule is observed only, record it and go on (False)."""
        if self.observes(breach.rule):
            self._observe_breach(breach)
            return False
        with self._lock:
            if self._breach_fired:
                return True
            self._breach_fired = True
            breach.at = breach.at or self.clock()
            self._breach = breach
        self._emit(f"BREACH {breach.message}", False)
        try:
            self.on_breach(breach)
        except Exception as exc:  # noqa: BLE001 - recorded; the stage sees the breach either way
            self._on_breach_error = f"{type(exc).__name__}: {exc}"
            self._emit(f"on_breach failed: {self._on_breach_error}", False)
        finally:
            self._finished.set()
        return True

    def _observe_breach(self, breach: Breach) -> None:
        breach.at = breach.at or self.clock()
        key = (breach.rule, breach.label, breach.function)
        with self._lock:
            seen = self._observed.get(key)
            if seen is not None:
                seen["polls"] += 1
                seen["last_value"], seen["last_at"] = breach.value, breach.at
                return
            self._observed[key] = {**breach.to_json(), "observed": True, "acted": False, "polls": 1}
        self._emit(f"OBSERVED (not acted on) {breach.message}", False)

    def _emit(self, line: str, same_line: bool) -> None:
        try:
            self.out(line, same_line)
        except Exception:  # noqa: BLE001 - progress output must never stop the watch
            pass

    def _run(self) -> None:
        try:
            self._schedule(self._sleep)
        except Exception as exc:  # noqa: BLE001 - a bug in the watch must fail the stage, not pass it
            self._fire(Breach("inconclusive", "watch", "", None, None, "", 0.0, "", "cloudwatch",
                              f"inconclusive: the metrics watch failed: {type(exc).__name__}: {exc}\n"
                              f"{traceback.format_exc(limit=3)}"))
        finally:
            if self._stop.is_set():
                self._finished.set()

    def _sleep(self, seconds: float) -> None:
        # wait() sets the deadline and wakes us, so a bake shorter than one interval is not overslept;
        # stop() wakes us too.
        self._wake.wait(seconds)
        self._wake.clear()

    def simulate(self, bake_seconds: float, advance: Callable[[float], None]) -> Breach | None:
        """Run one bake's schedule synchronously, ``advance`` moving the (virtual) clock between polls.

        The same schedule and decisions as the threads run (without probes): simulations of
        CloudWatch drive the real watch with it (tests/support/cloudwatch_sim.py).
        """
        self._deadline = self.started_at + bake_seconds
        self._schedule(advance)
        return self._breach

    def _schedule(self, sleep: Callable[[float], None]) -> None:
        """Poll every interval until the deadline, then the final decision; stop at the first breach."""
        while not self._stop.is_set() and not self._breach_fired:
            began = self.clock()
            if self._deadline is not None and began >= self._deadline:
                self._final(sleep)
                return
            self.poll(final=False)
            if self._breach_fired:
                return
            next_at = began + self.interval
            if self._deadline is not None:
                next_at = min(next_at, self._deadline)
            sleep(max(0.0, next_at - self.clock()))

    def _final(self, sleep: Callable[[float], None]) -> None:
        """The decision at the end of the bake, on the bake's whole data.

        Windows now end at the bake's end, and the data up to it arrives late (each
        source's lag): the watch keeps polling - still acting on any breach - until every
        rule's last bucket has arrived or ``final_wait`` (the longest lag) has passed since
        the deadline. Then a rule whose last bucket never arrived is judged on the window
        ending where its data did (``evaluate.settled``); only a rule with no data at all
        in the bake ends inconclusive. A late minute is waited for, not turned into
        "inconclusive", and no missing datapoint is read as a zero (../shared/AWS.md).
        """
        assert self._deadline is not None
        bound = self._deadline + self.final_wait
        while not self._stop.is_set() and not self._breach_fired:
            outcome = self.poll(final=True, settle=self.clock() >= bound)
            if outcome == "decided" or self._breach_fired:
                break
            sleep(min(self.interval, max(0.05, bound - self.clock())) if outcome == "waiting" else self.interval)
        self._finished.set()

    def poll(self, *, final: bool = False, settle: bool = True) -> str:
        """One poll: "decided", "waiting" (final, the last data not in yet), "confirming" (final, a trigger
        failing for the first time: read again before acting) or "error". Public for benchmarks.

        During the bake every window ends where its source's data has arrived (now - lag);
        with ``final`` the windows end at the deadline, and unless ``settle`` a rule whose
        last bucket has not arrived keeps waiting rather than being judged inconclusive.
        """
        t0 = time.perf_counter()
        now = self.clock()
        final_end = self._deadline if final else None
        targets = plan_targets(self.rules, self.policy, self.versions, self.started_at, now, final_end=final_end)
        extra = self._plot_specs()
        # The final wait is over once the monitoring suite's key metrics have their data too: it
        # judges the same bake window right after, on the same late-arriving series.
        awaited = targets + (plan_targets(self.policy.key_metrics, self.policy, self.versions, self.started_at, now,
                                          final_end=final_end) if final else [])
        if final:
            extra += [spec for t in awaited[len(targets):] for specs in target_specs(t, self.started_at).values()
                      for spec in specs]
        plan = plan_poll(targets, now, extra=extra)
        try:
            data = self.provider.fetch(plan.specs, plan.span_start, now)
        except ProviderError as exc:
            self._provider_error(str(exc))
            return "error"
        except QueryError as exc:
            self._fire(Breach("inconclusive", "watch", "", None, None, "", 0.0, "", "cloudwatch",
                              f"inconclusive: metrics unavailable: {exc}"))
            return "error"
        c = self._counters
        c.consecutive_provider_errors = 0
        c.polls += 1
        waiting = final and not settle and not all(arrived(t, data, plan.span_start) for t in awaited)
        if final and settle:
            plan.targets = settle_all(targets, data, plan.span_start)
        results = evaluate_plan(plan, data, now=now, grace=self.policy.watch.no_data_grace,
                                final=final and not waiting, result_kind="rollback trigger")
        self._thin_windows(results, final)
        self._record(now, results, data, plan.span_start)
        c.poll_seconds.append(time.perf_counter() - t0)
        # A final window ends at the deadline, on buckets that are arriving as this poll reads them; a
        # store may show one of a ratio's series before the other of the same put. A healthy release's
        # event delivery read 92.1 % on 89 events while its own EMF said 100 % in every second (most
        # likely a read racing moto's PutMetricData; not caught in the act). So a rollback trigger failing
        # on final data acts when the next poll, one interval later, fails it too. During the bake,
        # windows end ``lag`` before now: it acts at once.
        failing = {(r.rule, r.version, r.function) for r in results
                   if r.verdict == "fail" and r.version in ("new", ALL)} if final else set()
        unconfirmed = failing - self._final_failing
        self._final_failing = failing
        for result in results:
            if result.version not in ("new", ALL) or (result.rule, result.version, result.function) in unconfirmed:
                continue
            if result.verdict == "fail" or (result.verdict == "inconclusive" and not waiting):
                if self._fire(self._breach_of(result)):
                    return "decided"
        if unconfirmed:
            self._emit(self._progress(now, results, False) + " | bake over, a trigger fails on its last data: "
                       "reading it again to confirm", True)
            return "confirming"
        if waiting:
            self._emit(self._progress(now, results, False) + " | bake over, waiting for its last data", True)
            return "waiting"
        self._emit(self._progress(now, results, final), not final)
        return "decided"

    def _thin_windows(self, results: list[RuleResult], final: bool) -> None:
        """A sliding window short of samples once the trigger was judged: not "inconclusive".

        A trigger's window slides (the runbook's "in 1 minute"): with sparse traffic (WebSocket
        connects at 10 %) one window can hold fewer than ``min_samples`` after others held
        enough, and that says nothing about the release. So "inconclusive" is kept for a value
        never judged on enough samples in this bake (a missing or misnamed series, no traffic);
        one judged before waits for its next full window, and at the final decision counts as
        watched and never breached, saying so. The monitoring suite's key metrics still judge
        the whole bake window with their own minimum samples.
        """
        for r in results:
            key = (r.rule, r.version, r.function)
            if r.verdict in ("pass", "fail"):
                self._assessed.add(key)
            elif r.verdict == "inconclusive" and key in self._assessed:
                r.verdict = "pass" if final else "no_data"
                r.message += ("; judged on enough samples earlier in this bake and never breached" if final
                              else "; judged on enough samples earlier in this bake: waiting for a fuller window")

    def _provider_error(self, text: str) -> None:
        c = self._counters
        c.provider_errors += 1
        c.consecutive_provider_errors += 1
        c.max_consecutive_provider_errors = max(c.max_consecutive_provider_errors, c.consecutive_provider_errors)
        c.last_provider_error = text
        limit = self.policy.watch.provider_error_limit
        self._emit(f"CloudWatch error {c.consecutive_provider_errors}/{limit} in a row: {text}", False)
        if c.consecutive_provider_errors >= limit:
            self._fire(Breach(
                "provider", "metrics", "", None, None, "", self.clock() - self.started_at, "", "cloudwatch",
                f"inconclusive: metrics unavailable: {c.consecutive_provider_errors} GetMetricData failures in a "
                f"row (policy watch.provider_error_limit = {limit}); last: {text}. The stage is not passed."))

    def _breach_of(self, result: RuleResult) -> Breach:
        kind: BreachKind = "threshold" if result.verdict == "fail" and result.value is not None else "inconclusive"
        return Breach(kind, result.rule, result.signal, result.value, result.threshold, result.op, result.window,
                      result.version_number, "cloudwatch", result.message, function=result.function,
                      label=result.version, samples=result.samples)

    def _plot_dims(self, fn: str, version: str) -> tuple[tuple[str, str], ...]:
        return tuple((d["Name"], d["Value"]) for d in mn.service_dims(fn, version))

    def _plot_specs(self) -> list[SeriesSpec]:
        """Per-interval series of the API function's versions for the report's plots (same call).

        The functions' own EMF series: requests, 5xx answers and latency p95 per version,
        the signal the runbook's error rate and latency rules read.
        """
        fn = self.policy.service.api_function
        namespace = self.policy.metrics.service.namespace
        specs = []
        for by_fn in self.versions.values():
            version = by_fn.get(fn)
            if version is None:
                continue
            dims = self._plot_dims(fn, str(version))
            specs += [SeriesSpec(namespace, mn.SVC_REQUESTS, dims, "Sum", self.resolution, "service"),
                      SeriesSpec(namespace, mn.SVC_5XX, dims, "Sum", self.resolution, "service"),
                      SeriesSpec(namespace, mn.SVC_LATENCY, dims, "p95", self.resolution, "service")]
        return specs

    def _record(self, now: float, results: list[RuleResult], data: Mapping[SeriesSpec, Any], since: float) -> None:
        values: dict[str, Any] = {}
        poll = {"t": round(now, 3), "values": values}
        for r in results:
            key = f"{r.rule}|{r.version}|{r.function}"
            values[key] = {"value": r.value, "samples": r.samples, "verdict": r.verdict,
                                   "version": r.version_number}
        series: dict[str, Any] = {}
        # The report's plots read these names (reporting/stage_result.py): requests, 5xx, p95.
        wanted = {mn.SVC_REQUESTS: "invocations", mn.SVC_5XX: "errors", mn.SVC_LATENCY: "p95_ms"}
        fn = self.policy.service.api_function
        for label, by_fn in self.versions.items():
            version = by_fn.get(fn)
            if version is None:
                continue
            dims = self._plot_dims(fn, str(version))
            entry: dict[str, Any] = {"version": version, "source": "service (EMF)"}
            for spec in self._plot_specs():
                if spec.dims == dims:
                    entry[wanted[spec.metric]] = [[t, v] for t, v in data.get(spec, []) if t >= since]
            series.setdefault(label, {})[fn] = entry
        with self._lock:
            self._polls.append(poll)
            self._last_results = results
            self._series = series

    def _progress(self, now: float, results: list[RuleResult], final: bool) -> str:
        left = "" if self._deadline is None else f"{max(0.0, self._deadline - now):.0f}s left"
        parts = [f"watch {left or format_duration(round(now - self.started_at)) + ' in'}"]
        for label in ("new", "old"):
            shown = []
            for r in results:
                if r.version != label or r.function not in (self.policy.service.api_function,
                                                            self.policy.service.ws_function):
                    continue
                short = r.rule.replace("lambda_", "").replace("_rate", "")
                shown.append(f"{short} {format_value(get_signal(r.signal, policy=self.policy), r.value)}")
            if shown:
                api = self.policy.service.api_function
                version = self.versions[label].get(api, "?")
                samples = max((r.samples for r in results if r.version == label and r.function == api), default=0)
                parts.append(f"{label} v{version} ({samples:g} req): " + ", ".join(shown))
        for r in results:
            if r.version == ALL:
                parts.append(f"{r.rule} {format_value(get_signal(r.signal, policy=self.policy), r.value)}")
        if self._probe_total:
            parts.append(f"probes {self._probe_total - self._probe_failed}/{self._probe_total} ok")
        if self._probe_unattributed:
            parts.append(f"{self._probe_unattributed} unanswered by both versions (not counted)")
        if final:
            parts.append("bake complete, no trigger fired")
        return " | ".join(parts)

    # ------------------------------------------------------------ probes

    def _run_probes(self) -> None:
        assert self.probe is not None
        period = 1.0 / float(self.policy.watch.probe_rate)
        next_at = time.monotonic()
        while not self._stop.is_set() and not self._finished.is_set():
            t0 = time.monotonic()
            check = "path"
            try:
                ok, detail, *rest = self.probe()
                check = rest[0] if rest else check
            except Exception as exc:  # noqa: BLE001 - a probe that raises is a failed probe
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            if ok is None:  # unattributed: see the module docstring
                self._probe_unanswered(str(detail)[:300])
            else:
                if _THROTTLED.search(str(detail)):
                    # A Lambda throttle is the throttle-rate trigger's to judge, not a failed probe.
                    with self._lock:
                        self._probe_throttled += 1
                    ok = True
                self._probe_result(_Probe(self.clock(), bool(ok), str(detail)[:300], time.monotonic() - t0), check)
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _probe_unanswered(self, detail: str) -> None:
        """Neither version answered: shown with the failures, kept out of the rule's window."""
        with self._lock:
            self._probe_unattributed += 1
            self._probe_failures.append({"t": round(self.clock(), 3), "detail": detail, "counted": False})

    def _probe_rule(self, check: str) -> tuple[str, str]:
        """(trigger, function) of an active check: a built-in one, or a plugin's (bakeprobe.ProbeCheck)."""
        contributed = (getattr(self.probe, "plugin_rules", None) or {}).get(check)
        if contributed:
            return contributed
        rule, scope = PROBE_RULES.get(check, PROBE_RULES["path"])
        return rule, self.policy.service.ws_function if scope == "ws" else self.policy.service.api_function

    def _probe_result(self, probe: _Probe, check: str = "path") -> None:
        rule, function = self._probe_rule(check)
        with self._lock:
            window_of = self._probes.setdefault(rule, deque(maxlen=PROBE_WINDOW))
            window_of.append(probe)
            self._probe_total += 1
            if not probe.ok:
                self._probe_failed += 1
                self._probe_failures.append({"t": round(probe.at, 3), "check": check, "detail": probe.detail})
            recent = list(window_of)
        failed = [p for p in recent if not p.ok]
        ratio = len(failed) / len(recent)
        if len(failed) >= PROBE_MIN_FAILURES and ratio > self.probe_bound:
            version = self.versions["new"].get(function, "?")
            window = recent[-1].at - recent[0].at
            what = "probes" if check == "path" else f"{check} checks"
            self._fire(Breach(
                "probe", rule, "probe", ratio, self.probe_bound, "<=", window, str(version), "probe",
                f"rollback trigger {rule}: {len(failed)} of the last {len(recent)} {what} of "
                f"{function} version {version} (new) failed ({ratio:.0%}) over the last "
                f"{window:.1f}s, must be <= {self.probe_bound * 100:g}% with >= {PROBE_MIN_FAILURES} failures "
                f"(source: probe; last failure: {failed[-1].detail})",
                function=function, label="new", samples=len(recent)))
