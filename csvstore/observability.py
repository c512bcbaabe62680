"""What operators see: request ids, one access line per request, Prometheus metrics, probes.

Metrics live in a registry per application (no process-wide state), exposed at
``/metrics`` by the official client. With ``--workers N`` each process answers for itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from csvstore.db import Database, Operation
from csvstore.errors import (
    ERROR_KIND,
    DependencyUnavailable,
    Handler,
    problem_response,
    retry_after_value,
)
from csvstore.storage import Storage, StorageWriter

access_log = logging.getLogger("csvstore.access")
log = logging.getLogger("csvstore")

T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
UPLOADED_BYTES = web.RequestKey("uploaded_bytes", int)
# A client's request id is echoed only if it is short and plain: it ends up in logs.
_SAFE_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._:/=+-]{1,128}\Z")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "csvstore_http_requests", "HTTP requests answered", ["method", "route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "csvstore_http_request_duration_seconds", "time to answer, by route",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.uploaded_bytes = Counter(
            "csvstore_uploaded_bytes", "bytes of CSV files stored", registry=r
        )
        self.downloaded_bytes = Counter(
            "csvstore_downloaded_bytes", "bytes of stored files sent back", registry=r
        )
        self.uploads_in_flight = Gauge(
            "csvstore_uploads_in_flight", "uploads being received right now", registry=r
        )
        self.uploads_rejected = Counter(
            "csvstore_uploads_rejected", "uploads refused or failed, by reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self.db_latency = Histogram(
            "csvstore_db_operation_duration_seconds", "database operations, reads and writes",
            ["kind"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.storage_latency = Histogram(
            "csvstore_storage_operation_duration_seconds", "storage operations",
            ["operation"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.disk_free = Gauge(
            "csvstore_disk_free_bytes", "free bytes where uploads are written", registry=r
        )
        self.sessions_expired = Counter(
            "csvstore_sessions_expired", "sessions removed by the retention sweeper", registry=r
        )
        self.files_expired = Counter(
            "csvstore_files_expired", "files removed with expired sessions", registry=r
        )

    def watch_worker_restarts(self, read: Callable[[], int]) -> None:
        self.registry.register(_WorkerRestarts(read))

    def watch_disk(self, storage: Storage) -> None:
        def free() -> float:
            value = storage.free_bytes()
            return float("nan") if value is None else float(value)

        self.disk_free.set_function(free)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _WorkerRestarts(Collector):
    """The supervisor's count, read when /metrics is scraped (a Counter cannot be set)."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "csvstore_worker_restarts",
            "worker processes started again after one died (with --workers N; the same "
            "figure from every worker)",
            value=self._read(),
        )


def _route_of(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


# Upload failures by the error that ended them, for csvstore_uploads_rejected{reason}.
_REASONS = {
    "NotACsv": "not_csv",
    "PayloadTooLarge": "too_large",
    "NotFound": "unknown_session",
    "InsufficientStorage": "disk_full",
    "DependencyUnavailable": "unavailable",
    "RequestTimeout": "timeout",
    "ClientGone": "client_gone",
    "ValidationFailed": "bad_form",
    "BadRequest": "bad_request",
    "Unauthorized": "unauthorized",
}


def observe_middleware(metrics: Metrics) -> Middleware:
    """Request id, access log line and metrics for every request, whatever its outcome."""

    # Request ids: a random prefix per app and a counter, unique without a uuid4 (a system
    # call for random bytes) on every request.
    prefix = secrets.token_hex(8)
    serial = itertools.count(1)

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = (
            incoming if _SAFE_REQUEST_ID.match(incoming) else f"{prefix}{next(serial):016x}"
        )
        request[REQUEST_ID] = request_id
        route = _route_of(request)
        is_upload = route == "/api/csv/upload" and request.method == "POST"
        started = time.perf_counter()
        if is_upload:
            metrics.uploads_in_flight.inc()
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        finally:
            elapsed = time.perf_counter() - started
            status = response.status if response is not None else 500
            if is_upload:
                metrics.uploads_in_flight.dec()
                if status >= 400:
                    reason = _REASONS.get(request.get(ERROR_KIND, ""), "other")
                    metrics.uploads_rejected.labels(reason).inc()
                elif UPLOADED_BYTES in request:
                    metrics.uploaded_bytes.inc(request[UPLOADED_BYTES])
            if response is not None and route.endswith("/content") and status < 300:
                sent_body = request.method != "HEAD"
                metrics.downloaded_bytes.inc((response.content_length or 0) if sent_body else 0)
            # The response is sent after this middleware returns: its declared length.
            sent = (response.content_length or 0) if response is not None else 0
            metrics.requests.labels(request.method, route, str(status)).inc()
            metrics.latency.labels(request.method, route).observe(elapsed)
            access_log.info(
                "%s %s %s %d %dB %.1fms id=%s",
                request.remote,
                request.method,
                request.path_qs,
                status,
                sent,
                elapsed * 1000,
                request_id,
                extra={
                    "request_id": request_id,
                    "method": request.method,
                    "route": route,
                    "path": request.path,
                    "status": status,
                    "bytes": sent,
                    "duration_ms": round(elapsed * 1000, 2),
                    "remote": request.remote,
                },
            )

    return observe


class TimedDatabase:
    """A Database that reports how long each read and write took."""

    def __init__(self, inner: Database, metrics: Metrics) -> None:
        self.inner = inner
        self.queries = inner.queries
        self._read = metrics.db_latency.labels("read")
        self._write = metrics.db_latency.labels("write")

    async def read(self, op: Operation[T]) -> T:
        with self._read.time():
            return await self.inner.read(op)

    async def write(self, op: Operation[T]) -> T:
        with self._write.time():
            return await self.inner.write(op)

    async def integrity_check(self) -> list[str]:
        return await self.inner.integrity_check()

    async def close(self) -> None:
        await self.inner.close()


class TimedStorage:
    """A Storage that reports how long publishing, deleting and opening reads took."""

    def __init__(self, inner: Storage, metrics: Metrics) -> None:
        self.inner = inner
        self._latency = metrics.storage_latency

    async def prepare(
        self, *, temp_min_age: float = 0.0, abandoned: frozenset[str] = frozenset()
    ) -> int:
        return await self.inner.prepare(temp_min_age=temp_min_age, abandoned=abandoned)

    async def begin(self, key: str) -> StorageWriter:
        with self._latency.labels("begin").time():
            writer = await self.inner.begin(key)
        return _TimedWriter(writer, self._latency.labels("commit"))

    def read(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self.inner.read(key, start, length)

    async def delete(self, keys: list[str]) -> None:
        with self._latency.labels("delete").time():
            await self.inner.delete(keys)

    async def sync(self) -> None:
        with self._latency.labels("sync").time():
            await self.inner.sync()

    async def restore(self, key: str, data: bytes) -> None:
        await self.inner.restore(key, data)

    async def keys(self) -> set[str]:
        return await self.inner.keys()

    async def read_store_id(self) -> str | None:
        return await self.inner.read_store_id()

    async def create_store_id(self, store_id: str) -> str:
        return await self.inner.create_store_id(store_id)

    async def stat(self, key: str) -> tuple[int, float] | None:
        return await self.inner.stat(key)

    def free_bytes(self) -> int | None:
        return self.inner.free_bytes()

    async def probe_writable(self) -> None:
        await self.inner.probe_writable()


class _TimedWriter:
    def __init__(self, inner: StorageWriter, commit_latency: Any) -> None:
        self._inner = inner
        self._commit_latency = commit_latency

    @property
    def key(self) -> str:
        return self._inner.key

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def journal(self) -> bytes | None:
        return self._inner.journal

    async def write(self, chunk: bytes) -> None:
        await self._inner.write(chunk)

    async def commit(self) -> None:
        with self._commit_latency.time():
            await self._inner.commit()

    async def abort(self) -> None:
        await self._inner.abort()


async def metrics_handler(request: web.Request) -> web.Response:
    from csvstore.keys import METRICS_KEY

    body = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Nothing else is checked, so a slow disk can't fail it."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: the database answers, storage is writable, space above minimum.

    The database and storage are probed at once, each within ``ready_timeout`` seconds: a
    dependency that hangs (a stalled PostgreSQL, an S3 endpoint that accepts and never
    answers) is reported as such within the deadline instead of holding the probe."""
    from csvstore.keys import SETTINGS_KEY, STORE_KEY

    store = request.app[STORE_KEY]
    settings = request.app[SETTINGS_KEY]
    database, storage = await asyncio.gather(
        _probe("database", store.db.read(store.repo.ping), settings.ready_timeout),
        _probe("storage", store.storage.probe_writable(), settings.ready_timeout),
    )
    checks = {"database": database, "storage": storage}
    free = store.storage.free_bytes()
    checks["free_space"] = (
        "ok" if free is None or free >= settings.min_free_space else "below minimum"
    )
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        return problem_response(
            503,
            "not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
            headers={"Retry-After": retry_after_value(DependencyUnavailable.retry_after or 5)},
            extensions={"checks": checks},
        )
    return web.json_response({"status": "ready", "checks": checks})


async def _probe(name: str, check: Coroutine[Any, Any, object], deadline: float) -> str:
    # A task waited on, not awaited under a timeout: cancelling a call to a hung server can
    # itself wait on that server (a connection's clean-up), which must not hold the probe.
    task = asyncio.ensure_future(check)
    task.add_done_callback(_consume_outcome)
    done, _ = await asyncio.wait({task}, timeout=deadline)
    if not done:
        task.cancel()
        log.warning("readiness: %s gave no answer within %g s", name, deadline)
        return f"no answer within {deadline:g} s"
    if (exc := task.exception()) is not None:  # any failure means not ready; the log says what
        log.warning("readiness: %s failed: %r", name, exc)
        return "failing"
    return "ok"


def _consume_outcome(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()


class ClientProtocolErrors(logging.Filter):
    """A request that is not valid HTTP (a bad Transfer-Encoding, a malformed header line)
    is refused by aiohttp's HTTP layer with a plain 400 before any route sees it, and aiohttp
    logs it with a traceback as if the server had failed. It is the client's error: one
    warning line with the reason, no traceback. Installed on the ``aiohttp.server`` logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            record.msg = f"{record.getMessage()}: {exc.code} {exc.message}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class PoolReconnects(logging.Filter):
    """While PostgreSQL is down, asyncpg's pool logs each failed attempt to reconnect with a
    traceback. The outage is already answered (503, /readyz): one warning line with the
    reason is enough. Installed on the ``asyncpg.pool`` logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and record.levelno <= logging.WARNING:
            record.msg = f"{record.getMessage()}: {exc!r}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True
