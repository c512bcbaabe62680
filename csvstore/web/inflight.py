"""Counting the requests in flight, so a shutdown can wait for them to finish."""

from __future__ import annotations

import asyncio


class InFlight:
    """Counted by the observe middleware (web/observability.py), around every request."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()
