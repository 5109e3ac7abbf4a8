"""The metric-provider extension point: the hookspec through a small plugin, the router, and the
Prometheus provider's reading of counters and errors (pure; tests/test_service.py runs it against
a real Prometheus scraping the reference service)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_llamadeploy import newhooks
from pytest_llamadeploy.metrics.evaluate import evaluate_rules
from pytest_llamadeploy.metrics.prometheus import PrometheusProvider, histogram_quantile, render
from pytest_llamadeploy.metrics.providers import MetricRouter, NoProvider, metric_providers, provider_of
from pytest_llamadeploy.metrics.query import Points, ProviderError, QueryError, SeriesSpec
from pytest_llamadeploy.policy import Policy, load_policy
from tests.support.moto import free_port
from tests.test_options import no_aws  # noqa: F401  (the repository's policies, no AWS configuration)

pytest_plugins = ["pytester"]

POLICIES = Path(__file__).resolve().parents[1] / "policies"

#: A team's own metrics store, served by its plugin (``provider: teamstore``).
TEAM_POLICY = """\
extends: sandbox
metrics:
  sources:
    store:
      provider: teamstore
      resolution: 1s
      lag: 1s
  signals:
    custom.checkout_failure_rate:
      source: store
      unit: rate
      metric: checkout.failed
      denominator: [checkout.total]
      dimensions: {fn: $function, v: $version}
rollback_triggers:
  checkout:
    signal: custom.checkout_failure_rate
    op: "<"
    threshold: 2%
    window: 10s
    min_samples: 5
"""


class TeamStore:
    """What a team's plugin returns: per (metric, version) a datapoint a second."""

    def __init__(self, per_second: dict[tuple[str, str], float]):
        self.per_second = per_second
        self.asked: list[SeriesSpec] = []

    def fetch(self, specs: Sequence[SeriesSpec], start: float, end: float) -> dict[SeriesSpec, Points]:
        self.asked += specs
        return {s: [(float(t), self.per_second.get((s.metric, dict(s.dims)["v"]), 0.0))
                    for t in range(int(start), int(end))] for s in specs}


class TeamPlugin:
    def __init__(self, store: Any):
        self.store = store
        self.calls: list[str] = []

    def pytest_llamadeploy_metric_provider(self, name: str, source: Any, policy: Policy) -> Any:
        self.calls.append(name)
        return self.store if getattr(source, "provider", "") == "teamstore" else None


@pytest.fixture
def team_policy(tmp_path: Path) -> Policy:
    shutil.copytree(POLICIES, tmp_path / "policies")
    (tmp_path / "policies" / "team.yaml").write_text(TEAM_POLICY)
    return load_policy(tmp_path / "policies", "team").policy


def _hook(*plugins: Any) -> Any:
    pm = pytest.PytestPluginManager()
    pm.add_hookspecs(newhooks)
    for plugin in plugins:
        pm.register(plugin)
    return pm.hook


def _no_cloudwatch() -> Any:
    raise AssertionError("no CloudWatch client may be made: no series of this poll is CloudWatch's")


def test_plugin_provider_serves_its_source_and_the_rule_judges_its_data(team_policy: Policy) -> None:
    store = TeamStore({("checkout.total", "8"): 10.0, ("checkout.failed", "8"): 1.0,
                       ("checkout.total", "7"): 10.0})
    plugin = TeamPlugin(store)
    router = metric_providers(team_policy, _no_cloudwatch, _hook(plugin))
    assert plugin.calls == ["service", "aws", "store"]  # asked for every source, before anything moves
    assert router.providers["store"] is store
    rules = {"checkout": team_policy.rollback_triggers["checkout"]}
    versions = {"new": {"onchain-api": "8"}, "old": {"onchain-api": "7"}}
    results = {r.version: r for r in evaluate_rules(router, team_policy, rules, versions, 1000.0, 1010.0,
                                                    now=1020.0)}
    assert (results["new"].verdict, results["new"].value, results["new"].samples) == ("fail", 0.1, 100.0)
    assert (results["old"].verdict, results["old"].value) == ("pass", 0.0)
    assert "source: teamstore: store metrics" in results["new"].message
    assert {dict(s.dims)["fn"] for s in store.asked} == {"onchain-api"} and {s.source for s in store.asked} == {"store"}


def test_source_no_plugin_provides_is_refused_naming_key_and_fix(team_policy: Policy) -> None:
    with pytest.raises(NoProvider, match=r"metrics.sources.store.provider = 'teamstore': no plugin supplies it .*"
                                         r"install the plugin that provides it, or use provider: cloudwatch or prometheus"):
        metric_providers(team_policy, _no_cloudwatch, _hook())

    # A caller holding only a CloudWatch client (a suite) still reads every other source.
    router = provider_of(_no_cloudwatch, team_policy)
    assert isinstance(router, MetricRouter) and set(router.providers) == {"service", "aws"}
    spec = SeriesSpec("", "checkout.total", (("v", "8"),), "Sum", 1, "store")
    with pytest.raises(QueryError, match="no metric provider for source 'store' here.*pytest_llamadeploy_metric_provider"):
        router.fetch([spec], 0.0, 2.0)

    class Broken:
        def pytest_llamadeploy_metric_provider(self, name: str, source: Any, policy: Policy) -> Any:
            return object() if name == "store" else None

    with pytest.raises(NoProvider, match=r"'store': the plugin's provider object has no fetch\(specs, start, end\)"):
        metric_providers(team_policy, _no_cloudwatch, _hook(Broken()))


@pytest.mark.sandbox
def test_gate_run_without_the_provider_plugin_is_refused_before_anything(no_aws: pytest.Pytester) -> None:  # noqa: F811
    (no_aws.path / "policies" / "team.yaml").write_text(TEAM_POLICY.replace("extends: sandbox", "extends: staging"))
    r = no_aws.runpytest_subprocess("-p", "no:cacheprovider", "--env=team", "--stage=verify", "--plan", timeout=60)
    assert r.ret == 4, r.stdout.str() + r.stderr.str()
    r.stderr.fnmatch_lines(["*team.yaml: metrics.sources.store.provider = 'teamstore': no plugin supplies it*"])
    assert "Traceback" not in r.stderr.str()


def test_a_plugin_may_replace_cloudwatch_for_a_built_in_source(team_policy: Policy) -> None:
    store = TeamStore({})

    class Everything:
        def pytest_llamadeploy_metric_provider(self, name: str, source: Any, policy: Policy) -> Any:
            return store

    router = metric_providers(team_policy, _no_cloudwatch, _hook(Everything()))
    assert isinstance(router, MetricRouter) and set(router.providers) == {"service", "aws", "store"}
    assert router.cloudwatch is None
    spec = SeriesSpec("LlamaDeploy/Service", "Requests", (("v", "8"),), "Sum", 1)  # no source: the service's
    assert router.fetch([spec], 0.0, 2.0) == {spec: [(0.0, 0.0), (1.0, 0.0)]}


# -- the Prometheus provider: PromQL, counters into per-bucket increases, errors -------------------


def _prometheus(handler: Any) -> PrometheusProvider:
    return PrometheusProvider("prom", "http://127.0.0.1:9", client=httpx.Client(transport=httpx.MockTransport(handler)))


def _matrix(*series: list[tuple[float, str]]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "matrix",
                                          "result": [{"metric": {}, "values": list(v)} for v in series]}}


def test_render_fills_dimensions_period_and_quantile() -> None:
    spec = SeriesSpec("PromQL", 'histogram_quantile($quantile, sum by (le) (increase(lat_bucket{v="$version"}[$window])))',
                      (("version", 'a"b'),), "p95", 60, "prom")
    assert render(spec) == 'histogram_quantile(0.95, sum by (le) (increase(lat_bucket{v="a\\"b"}[60s])))'


def test_counter_read_as_increases_per_bucket_born_at_zero_and_reset() -> None:
    asked: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(dict(request.url.params))
        # One series present before the window (base 100), another born inside it, one restarting.
        return httpx.Response(200, json=_matrix(
            [(99, "100"), (100, "100"), (101, "103"), (102, "NaN"), (103, "110")],
            [(101, "4"), (102, "6")],
            [(99, "50"), (100, "52"), (101, "1")]))

    spec = SeriesSpec("PromQL", "sum(requests_total)", (), "Sum", 1, "prom")
    points = _prometheus(handler).fetch([spec], 100.2, 103.7)[spec]
    assert asked == [{"query": "sum(requests_total)", "start": "99", "end": "103", "step": "1"}]
    # Bucket 99 is before the window (its increase only sets the base). Bucket 100: 3 + 4 (born at zero)
    # + 1 (restarted: counted from zero); 101: 2; 102: the 7 from 101 to 103 (no sample at 102).
    assert points == [(100.0, 8.0), (101.0, 2.0), (102.0, 7.0)]


def test_histogram_quantile_interpolates_within_its_bucket() -> None:
    inf = float("inf")
    assert histogram_quantile(0.95, {10.0: 0.0, 50.0: 0.0, 100.0: 20.0, inf: 20.0}) == 97.5  # 50 + 50 x 19/20
    assert histogram_quantile(0.5, {10.0: 4.0, 20.0: 8.0, inf: 8.0}) == 10.0
    assert histogram_quantile(0.99, {10.0: 1.0, inf: 10.0}) == 10.0  # in the open bucket: its lower bound
    assert histogram_quantile(0.95, {10.0: 0.0, inf: 0.0}) is None and histogram_quantile(0.95, {10.0: 3.0}) is None


def test_percentile_from_bucket_counters_over_the_window() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        # le=50 rose by 2 (one series), le=100 and +Inf by 10; a series without le is refused below.
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"le": "50.0"}, "values": [[59, "1"], [61, "3"]]},
            {"metric": {"le": "100.0"}, "values": [[59, "5"], [61, "15"]]},
            {"metric": {"le": "+Inf"}, "values": [[59, "5"], [61, "15"]]}]}})

    spec = SeriesSpec("PromQL", "sum by (le) (lat_bucket)", (), "p50", 60, "prom")
    assert _prometheus(handler).fetch([spec], 60.0, 200.0) == {spec: [(60.0, 50.0 + 50.0 * (5 - 2) / (10 - 2))]}
    no_le = _prometheus(lambda r: httpx.Response(200, json=_matrix([(59, "1"), (61, "3")])))
    with pytest.raises(QueryError, match="histogram buckets by le"):
        no_le.fetch([spec], 60.0, 200.0)


@pytest.mark.parametrize(("status", "body", "error"), [
    (503, {"status": "error", "errorType": "unavailable", "error": "tsdb busy"}, ProviderError),
    (429, {}, ProviderError),
    (400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}, QueryError),
])
def test_outage_and_refused_query_are_told_apart(status: int, body: dict[str, Any], error: type[Exception]) -> None:
    provider = _prometheus(lambda request: httpx.Response(status, json=body))
    spec = SeriesSpec("PromQL", "sum(x_total)", (), "Sum", 1, "prom")
    with pytest.raises(error) as info:
        provider.fetch([spec], 100.0, 110.0)
    assert f"HTTP {status}" in str(info.value)


def test_unreachable_prometheus_is_a_provider_error_naming_only_the_host() -> None:
    port = free_port()  # nothing listens there
    provider = PrometheusProvider("prom", f"http://user:s3cret@127.0.0.1:{port}", timeout=2)
    spec = SeriesSpec("PromQL", "sum(x_total)", (), "Sum", 1, "prom")
    with pytest.raises(ProviderError) as info:
        provider.fetch([spec], 100.0, 110.0)
    assert f"127.0.0.1:{port}" in str(info.value) and "s3cret" not in str(info.value)
