"""Waking waiters when shared state changes: each rechecks its own condition after waking."""

from __future__ import annotations

import asyncio


class Changes:
    """`notify()` wakes everyone in `wait()`; a fresh event per change, so no waiter misses one."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None) -> None:
        """Until the next `notify()`, or `timeout` seconds pass (None: no limit)."""
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
