"""Load testing with Locust, always as a subprocess (never imported: it patches the process with gevent)."""

from .runner import LoadResult, LocustError, LocustRun, local_workers, run_locust, worker_command
from .stats import EndpointStats, RunStats, response_time_percentile

__all__ = [
    "EndpointStats",
    "LoadResult",
    "LocustError",
    "LocustRun",
    "RunStats",
    "local_workers",
    "response_time_percentile",
    "run_locust",
    "worker_command",
]
