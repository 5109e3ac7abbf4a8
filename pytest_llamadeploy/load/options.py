"""Scale-out options of the performance suite (each with an ini twin).

``--locust-processes N``       run the load with ``locust --processes N`` (every core of this machine)
``--locust-expect-workers N``  run locust as a master and wait for N workers started elsewhere with
                               ``locust -f pytest_llamadeploy/load/locustfile.py --worker --master-host HOST --master-port PORT``
``--locust-master-bind``       HOST:PORT the master listens on (default 127.0.0.1:5557; bind 0.0.0.0 for other machines)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

DEFAULT_MASTER_BIND = "127.0.0.1:5557"


def _count(option: str, minimum: int) -> Any:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise pytest.UsageError(f"{option} {raw!r}: expected a whole number >= {minimum}, e.g. {option} 2")
        return value

    return parse


def parse_bind(raw: str, option: str = "--locust-master-bind") -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise pytest.UsageError(f"{option} {raw!r}: expected HOST:PORT, e.g. 127.0.0.1:5557 or 0.0.0.0:5557")
    return host, int(port)


def add_options(group: Any, parser: pytest.Parser | None = None) -> None:
    """Add the locust options to ``group`` (an option group of ``parser``) and their ini twins."""
    parser = parser or group.parser
    group.addoption("--locust-processes", dest="llamadeploy_locust_processes", default=None,
                    type=_count("--locust-processes", 1),
                    help="locust processes on this machine for the performance load (locust --processes N; default 1)")
    group.addoption("--locust-expect-workers", dest="llamadeploy_locust_expect_workers", default=None,
                    type=_count("--locust-expect-workers", 0),
                    help="run locust as master and wait for N workers: start each with `locust -f "
                         "pytest_llamadeploy/load/locustfile.py --worker --master-host HOST --master-port PORT`")
    group.addoption("--locust-master-bind", dest="llamadeploy_locust_master_bind", default=None,
                    help=f"HOST:PORT the locust master listens on for workers (default {DEFAULT_MASTER_BIND})")
    parser.addini("llamadeploy_locust_processes", default="1", help="same as --locust-processes")
    parser.addini("llamadeploy_locust_expect_workers", default="0", help="same as --locust-expect-workers")
    parser.addini("llamadeploy_locust_master_bind", default=DEFAULT_MASTER_BIND, help="same as --locust-master-bind")


@dataclass(frozen=True)
class LoadOptions:
    processes: int = 1
    expect_workers: int = 0
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int = 5557

    @classmethod
    def from_config(cls, config: pytest.Config) -> LoadOptions:
        """Command line first, then the ini twin; defaults when the options were never registered."""

        def get(dest: str, ini: str, parse: Any, default: Any) -> Any:
            try:
                value = config.getoption(dest)
            except ValueError:
                value = None
            if value is not None:
                return value
            try:
                raw = config.getini(ini)
            except ValueError:
                return default
            return parse(str(raw)) if raw not in (None, "") else default

        processes = get("llamadeploy_locust_processes", "llamadeploy_locust_processes",
                        _count("llamadeploy_locust_processes (ini)", 1), 1)
        workers = get("llamadeploy_locust_expect_workers", "llamadeploy_locust_expect_workers",
                      _count("llamadeploy_locust_expect_workers (ini)", 0), 0)
        bind = get("llamadeploy_locust_master_bind", "llamadeploy_locust_master_bind", str, DEFAULT_MASTER_BIND)
        host, port = parse_bind(str(bind))
        if processes > 1 and workers:
            raise pytest.UsageError(
                "--locust-processes and --locust-expect-workers do not combine: the master only coordinates; "
                "give the processes to the workers (locust --worker --processes N ...)"
            )
        return cls(processes, workers, host, port)
