"""Counting the requests in flight, so a shutdown can wait for them to finish."""

from __future__ import annotations

import asyncio

from aiohttp import web

from csvstore.web.problems import Handler


class InFlight:
    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()

    def middleware(self) -> web.middleware:  # type: ignore[valid-type]
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.count += 1
            self._idle.clear()
            try:
                return await handler(request)
            finally:
                self.count -= 1
                if not self.count:
                    self._idle.set()

        return count
