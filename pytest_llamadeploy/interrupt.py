"""SIGTERM and SIGINT on the controller: end the stage, roll back per policy, record it, exit 2.

CI cancels a job with SIGTERM (GitHub Actions: SIGINT, then SIGTERM, then SIGKILL
seconds later); Python's default dies on SIGTERM without running any cleanup,
and a background job inherits SIGINT as ignored. Between the start of the
stage and its verdict the controller therefore handles both itself:

- the first signal raises :class:`StageInterrupted` (a ``KeyboardInterrupt``, so
  pytest ends the session as interrupted and still calls ``sessionfinish``,
  where the runner rolls back and records the verdict) - unless the main
  thread is inside a *shielded* section (taking the lock and writing the
  ``started`` record, moving traffic, rolling back, writing the verdict), where
  it is only recorded and raised when the section ends, so no half-done
  traffic move or lock is left behind;
- later signals are recorded, never raised: a second Ctrl-C or SIGTERM while
  the rollback runs must not abort the rollback.

SIGINT is handled even when it was inherited as ignored. SIGKILL cannot be
handled; README's "killed run" paragraph says how the next run repairs that.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StageInterrupted(KeyboardInterrupt):
    def __init__(self, signame: str):
        self.signame = signame
        super().__init__(f"{signame} received")


class Interrupts:
    def __init__(self) -> None:
        self.received: list[str] = []
        self._previous: dict[int, Any] = {}
        self._depth = 0
        self._armed = False
        self._raised = False

    @property
    def first(self) -> str | None:
        return self.received[0] if self.received else None

    def install(self) -> bool:
        """Handle SIGTERM and SIGINT from now on (main thread only; returns False elsewhere)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return bool(self._previous)
        for sig in HANDLED:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        self._armed = True
        return True

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, TypeError):  # not the main thread any more, or a handler we cannot restore
                pass
        self._previous.clear()
        self._armed = False

    def disarm(self) -> None:
        """After the verdict: signals are recorded only (the stage is over; its record stands)."""
        self._armed = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signal.Signals(signum).name)
        if self._armed and self._depth == 0 and not self._raised:
            self._raised = True
            raise StageInterrupted(self.received[0])

    def raise_pending(self) -> None:
        """Raise a signal that arrived inside a shielded section, once, where it is safe to."""
        if self.received and self._armed and self._depth == 0 and not self._raised:
            self._raised = True
            raise StageInterrupted(self.received[0])

    @contextmanager
    def shield(self, *, raise_after: bool = True) -> Iterator[None]:
        """Signals inside are recorded, not raised; with ``raise_after`` the first one is raised on the way out.

        Only the main thread receives signals, so elsewhere (the watch thread's rollback) this shields nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if raise_after:
            self.raise_pending()
