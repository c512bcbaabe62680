"""Per-client limits on /api: requests per period (a token bucket) and uploads in progress,
counted per API key, or per client address without one. In-process: each worker counts its
own (docs/operations.md#rate-limits)."""

from __future__ import annotations

import time
from collections.abc import Hashable

from aiohttp import web
from aiohttp.typedefs import Middleware

from csvstore.config_values import RateLimit
from csvstore.errors import TooManyRequests
from csvstore.web.problems import Handler
from csvstore.web.security import API_KEY, PROTECTED_PREFIX

# An upload refused for the number in progress: no wait is known, and one is soon over.
UPLOADS_RETRY_AFTER = 1.0
# Float steps must not refuse a client that keeps exactly to its rate.
_EPSILON = 1e-9


class TokenBuckets:
    """One bucket per client, holding at most ``count`` tokens and refilled at
    ``count / period`` per second: a client sending at most ``count`` requests in any
    ``period`` always finds a token."""

    def __init__(self, limit: RateLimit) -> None:
        self.capacity = float(limit.count)
        self.rate = limit.per_second
        # client -> [tokens, when counted]; a full bucket is dropped (as good as a new one)
        self.buckets: dict[Hashable, list[float]] = {}
        self._refill_time = self.capacity / self.rate
        self._next_sweep = 0.0

    def take(self, client: Hashable, now: float) -> float:
        """0 when the request may go; else the seconds until the bucket has a token."""
        if now >= self._next_sweep:
            self._sweep(now)
        bucket = self.buckets.get(client)
        if bucket is None:
            self.buckets[client] = [self.capacity - 1, now]
            return 0.0
        tokens = min(self.capacity, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1 - _EPSILON:
            bucket[0] = tokens - 1
            return 0.0
        bucket[0] = tokens
        return (1 - tokens) / self.rate

    def _sweep(self, now: float) -> None:
        """Forget the clients whose buckets are full again: memory follows the clients of
        the last refill time, not every client ever seen."""
        rate, capacity = self.rate, self.capacity
        self.buckets = {
            client: bucket
            for client, bucket in self.buckets.items()
            if bucket[0] + (now - bucket[1]) * rate < capacity
        }
        self._next_sweep = now + max(1.0, self._refill_time)


def client_of(request: web.Request) -> Hashable:
    digest = request.get(API_KEY)
    return digest if digest is not None else request.remote or ""


def limits_middleware(
    rate: RateLimit | None, max_uploads: int, upload_routes: set[tuple[str, str]]
) -> Middleware:
    buckets = TokenBuckets(rate) if rate is not None else None
    too_many = (
        f"too many requests: at most {rate.count} per {_period(rate.period)} for one API key "
        "or client address; retry after Retry-After seconds"
        if rate is not None
        else ""
    )
    uploading: dict[Hashable, int] = {}
    clock = time.monotonic

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A browser's CORS preflight (and tus discovery) is not a request of its own.
        if request.method == "OPTIONS" or not request.path.startswith(PROTECTED_PREFIX):
            return await handler(request)
        client = client_of(request)
        if buckets is not None and (wait := buckets.take(client, clock())):
            raise TooManyRequests(too_many, retry_after=wait)
        if not max_uploads or not _is_upload(request, upload_routes):
            return await handler(request)
        in_progress = uploading.get(client, 0)
        if in_progress >= max_uploads:
            raise TooManyRequests(
                f"too many uploads in progress: at most {max_uploads} at once for one API key "
                "or client address",
                retry_after=UPLOADS_RETRY_AFTER,
            )
        uploading[client] = in_progress + 1
        try:
            return await handler(request)
        finally:
            left = uploading[client] - 1
            if left:
                uploading[client] = left
            else:
                del uploading[client]

    return limit


def _is_upload(request: web.Request, upload_routes: set[tuple[str, str]]) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and (request.method, resource.canonical) in upload_routes


def _period(seconds: float) -> str:
    return {1.0: "second", 60.0: "minute", 3600.0: "hour"}.get(seconds, f"{seconds:g} s")
