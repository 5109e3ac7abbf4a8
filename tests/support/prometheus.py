"""A real Prometheus server (Debian's package, scripts/setup.sh) for the Prometheus provider's tests.

Started on a free loopback port with a temporary config and storage, scraping the given targets
every second; its lifetime is bounded by ``timeout`` (it stops by itself even if the test process
dies), and it is stopped by PID.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.moto import free_port, stop_by_pid

#: Longest a test's Prometheus may live, whatever happens to the test.
LIFETIME = 120

#: A policy with a Prometheus source and a custom signal on it: the function's own 5xx and requests
#: per version, as the reference service exposes them (sandbox/service/prom.py). ``{url}``: the server.
POLICY = """\
extends: sandbox
metrics:
  sources:
    prom:
      provider: prometheus
      url: {url}
      resolution: 1s
      lag: 2s
  signals:
    custom.prom_error_rate:
      source: prom
      unit: rate
      description: 5xx answers / requests of a version, as the function counts them (Prometheus)
      query: 'sum(llamadeploy_service_responses_5xx_total{{function="$function",version="$version"}})'
      denominator_query: 'sum(llamadeploy_service_requests_total{{function="$function",version="$version"}})'
      samples_noun: requests
    custom.prom_latency:
      source: prom
      unit: ms
      statistic: p95
      query: 'sum by (le) (llamadeploy_service_latency_ms_bucket{{function="$function",version="$version"}})'
key_metrics:
  prom_latency:
    signal: custom.prom_latency
    op: "<"
    threshold: 80ms
    window: 60s
rollback_triggers:
  prom_error_rate:
    signal: custom.prom_error_rate
    op: "<="
    threshold: 5%
    window: 15s
    min_samples: 20
"""


@contextmanager
def prometheus_server(work: Path, targets: Sequence[str]) -> Iterator[str]:
    """Prometheus scraping ``targets`` (``host:port``) every second; yields its URL once it is ready."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed: run scripts/setup.sh (apt-get install prometheus)")
    work.mkdir(parents=True, exist_ok=True)
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: service\n    static_configs:\n"
        f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "prometheus.log", "w")  # noqa: SIM115 - closed in finally, the child writes to it
    proc = subprocess.Popen(
        ["timeout", "-k", "5", str(LIFETIME), binary, f"--config.file={config}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1h", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if urllib.request.urlopen(url + "/-/ready", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not become ready; see {log.name}: "
                                   f"{(work / 'prometheus.log').read_text()[-1500:]}")
            time.sleep(0.1)
        yield url
    finally:
        stop_by_pid(proc)  # timeout passes the SIGTERM on to prometheus
        log.close()
