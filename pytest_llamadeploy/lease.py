"""The env lock's lease: who holds it, the heartbeat that keeps it, and when another run may take it over.

Three rules keep two runs from acting on one env at once, without trusting any
host's wall clock:

- The holder renews the lease from a heartbeat thread every third of the lease,
  during every step (deploy command, operations, bake, suites). Each renewal
  bumps the lock's ``counter``. The holder measures its own lease on its
  monotonic clock from the start of its last successful renewal, and stops
  acting (no traffic move, no record write) once 90 % of it has passed without
  a renewal, or at once when a renewal finds the lock taken by another run.
- A lock whose ``expires_at`` has passed by the taker's wall clock is only a
  candidate: the taker then watches it for one full lease on *its own*
  monotonic clock, and takes over only if the lock (run id and counter) stayed
  unchanged all that time, with a write conditional on exactly that run id and
  counter. A live holder renews at least three times per lease, so skewed
  clocks cannot make two runs both believe they hold it: by the time the taker
  acts, the holder's own clock has told it to stop. The residual risk is a
  holder whose clock *rate* differs from the taker's by more than 10 %, or an
  API call (UpdateAlias) sent just before the holder's lease ran out and
  landing after the takeover.
- A holder "gone" at once (no wait) only when its identity proves it: the same
  host name *and* boot id *and* PID namespace as the taker, and its PID either
  not running or now a process with another start time. Host name and PID
  alone are not trusted: containers share host names and reuse PIDs.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .procs import pid_alive

#: The holder stops acting once this share of its lease passed without a renewal.
SAFETY = 0.9


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def owner_identity() -> dict[str, Any]:
    """What proves, on a later run on the same machine, that this process is gone."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "pidns": _pid_namespace(), "pid": pid, "start": process_start(pid)}


def holder_gone(identity: Mapping[str, Any]) -> str | None:
    """Why the holder with ``identity`` provably no longer runs, or None when it may (or we cannot tell)."""
    mine = owner_identity()
    for key in ("host", "boot_id", "pidns"):
        if not identity.get(key) or identity.get(key) != mine[key]:
            return None  # another machine, boot or container: its processes are not ours to see
    pid = identity.get("pid")
    if not isinstance(pid, int):
        return None
    if not pid_alive(pid):
        return f"its process {pid} on this host is gone"
    start = identity.get("start")
    if start and process_start(pid) not in (None, start):
        return f"its process {pid} on this host is gone (the PID now belongs to another process)"
    return None


def observe_lapse(read: Callable[[], Any], lock: Any, *, out: Callable[[str], None] | None = None,
                  cancelled: Callable[[], bool] = lambda: False, clock: Callable[[], float] = time.monotonic,
                  wait: Callable[[float], Any] | None = None) -> str | None:
    """Watch ``lock`` for one full lease on this host's monotonic clock.

    Returns the takeover reason when it stayed unchanged (same run id and
    renewal counter) for the whole lease; None when it changed or was released
    (its holder is alive, or gone cleanly) or when ``cancelled()`` turned true.
    """
    lease = max(0.0, float(lock.lease or (lock.expires_at - lock.acquired_at)))
    pause = wait or threading.Event().wait
    if lease > 0 and out is not None:
        out(f"llamadeploy: the lock of {lock.env} ({lock.describe()}) expired by the wall clock; watching it for "
            f"{lease:g}s on this host's clock before taking it over")
    started = clock()
    step = min(max(lease / 20.0, 0.05), 5.0)
    while True:
        current = read()
        if current is None or current.run_id != lock.run_id or current.counter != lock.counter:
            return None
        elapsed = clock() - started
        if elapsed >= lease:
            return (f"its lease lapsed: unchanged (renewal {lock.counter}) for {lease:g}s by this host's monotonic "
                    f"clock, after expiring by the wall clock")
        if cancelled():
            return None
        pause(min(step, lease - elapsed))


class Heartbeat:
    """Renews the lease in the background; tells ``on_lost`` once when it can no longer be sure to hold it."""

    def __init__(self, renew: Callable[[], None], lease: float, *, on_lost: Callable[[str], None],
                 conflict: type[BaseException], clock: Callable[[], float] = time.monotonic,
                 acquired_at: float | None = None):
        self.renew = renew
        self.lease = float(lease)
        self.interval = max(self.lease / 3.0, 0.05)
        self.on_lost = on_lost
        self.conflict = conflict
        self.clock = clock
        self.valid_until = (clock() if acquired_at is None else acquired_at) + SAFETY * self.lease
        self.renewals = 0
        self.last_error = ""
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llamadeploy-lease", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def check(self) -> str | None:
        """Why this run may no longer act (lease lost or lapsed), or None while it holds the lock."""
        if self.lost is None and self.clock() >= self.valid_until:
            self._lose(f"the lease was not renewed for {SAFETY * self.lease:g}s of its {self.lease:g}s "
                       f"(last error: {self.last_error or 'none'})")
        return self.lost

    def _lose(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        try:
            self.on_lost(reason)
        except Exception:  # noqa: BLE001 - the flag is set either way; the runner reads it before acting
            pass

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            began = self.clock()
            try:
                self.renew()
            except self.conflict as exc:
                self._lose(f"another run took the lock: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - throttling, a network blip: try again sooner
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if self.check() is not None:
                    return
                wait = max(min(self.interval, (self.valid_until - self.clock()) / 3.0), 0.05)
                continue
            self.valid_until = began + SAFETY * self.lease
            self.renewals += 1
            self.last_error = ""
            wait = self.interval
