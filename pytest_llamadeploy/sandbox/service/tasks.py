"""Background asyncio tasks of the reference service (the EMF flusher, the pub/sub listener)."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it to end; whatever it raises while ending is ignored (shutting down)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down anyway
        pass
