"""What operators see: request ids, one access line per request, Prometheus metrics (a
registry per application, so per worker), probes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import secrets
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
)

from csvstore.errors import DependencyUnavailable, retry_after_value
from csvstore.metrics import Metrics
from csvstore.web.inflight import InFlight
from csvstore.web.keys import METRICS_KEY, SETTINGS_KEY, STORE_KEY
from csvstore.web.problems import (
    ERROR_REASON,
    NOT_READY,
    REQUEST_ID,
    RESPONSE_STARTED,
    SHUTTING_DOWN,
    Handler,
    abort_started,
    error_response,
    problem_response,
)

access_log = logging.getLogger("csvstore.access")
log = logging.getLogger("csvstore")

T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-ID"
UPLOADED_BYTES = web.RequestKey("uploaded_bytes", int)
QUERY_SQL = web.RequestKey("query_sql", str)
# The access line shows this much of a query's SQL.
_SQL_SHOWN = 200
# A client's request id is echoed only if it is short and plain: it ends up in logs.
_SAFE_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._:/=+-]{1,128}\Z")


def _route_of(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


# What a route is, for the metrics: (method, route pattern) -> kind.
UPLOAD = "upload"
DOWNLOAD = "download"
QUERY = "query"
RouteKinds = dict[tuple[str, str], str]


def rejection_label(reason: str) -> str:
    """The error's reason in Prometheus' snake case."""
    return reason.replace("-", "_")


class _BodyCount:
    """The writer's on_body_write hook: body bytes, before chunked framing."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 0

    def __call__(self, size: int, _output_size: int) -> None:
        self.size += size


async def _already_sent(request: web.BaseRequest) -> None:
    return None


class RequestIds:
    """The client's request id if plain, else one made; stamped on every response as it is
    prepared, since a streamed one is sent before the middleware sees it."""

    def __init__(self) -> None:
        # A random prefix and a counter: unique without a system call per request.
        self.prefix = secrets.token_hex(8)
        self.serial = itertools.count(1)

    def of(self, request: web.BaseRequest) -> str:
        if (known := request.get(REQUEST_ID)) is None:
            incoming = request.headers.get(REQUEST_ID_HEADER, "")
            safe = _SAFE_REQUEST_ID.match(incoming)
            known = request[REQUEST_ID] = (
                incoming if safe else f"{self.prefix}{next(self.serial):016x}"
            )
        return known

    async def stamp(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        response.headers.setdefault(REQUEST_ID_HEADER, self.of(request))


REQUEST_IDS_KEY = web.AppKey("request_ids", RequestIds)


def observe_middleware(
    metrics: Metrics, kinds: RouteKinds, ids: RequestIds, inflight: InFlight
) -> Middleware:
    """Requests in flight, request id, access log line and metrics for every request, and
    any exception as problem+json: one middleware, not three (bench/RESULTS.md, s24-small)."""
    # Labelled children by labels: .labels() validates and locks on every call.
    counted: dict[tuple[str, str, int], Any] = {}
    timed: dict[tuple[str, str], Any] = {}

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = ids.of(request)
        route = _route_of(request)
        method = request.method
        kind = kinds.get((method, route))
        is_upload = kind == UPLOAD
        started = time.perf_counter()
        if is_upload:
            metrics.uploads_in_flight.inc()
        # Downloads stream (chunked archives, cut transfers): their body bytes are counted
        # as written; any other response's length is its Content-Length.
        body_count = _BodyCount() if kind == DOWNLOAD else None
        if body_count is not None:
            request.writer.on_body_write = body_count
        response: web.StreamResponse | None = None
        inflight.enter()
        try:
            try:
                response = await handler(request)
            except Exception as exc:
                if request.get(RESPONSE_STARTED):
                    response = abort_started(request, exc)
                else:
                    response = error_response(request, exc)
                    if not request.content.is_eof() or request.content.exception():
                        # Refused before its body was read (a 413 on Content-Length): say
                        # the connection ends, rather than have the client send the rest.
                        response.force_close()
            response.headers[REQUEST_ID_HEADER] = request_id
            if not response.prepared:
                # Sent here, not after the middlewares return: the line tells the whole time.
                with contextlib.suppress(ConnectionError):
                    await response.prepare(request)
                    await response.write_eof()
                if isinstance(response, web.FileResponse):
                    response.prepare = _already_sent  # type: ignore[method-assign]  # it'd resend
            return response
        except asyncio.CancelledError:
            # Aborted past --shutdown-grace: the server going away, not failing (a 503).
            request[ERROR_REASON] = SHUTTING_DOWN
            response = None
            raise
        finally:
            # No await below: released first is as good as last, and never skipped.
            inflight.leave()
            elapsed = time.perf_counter() - started
            if response is not None:
                status = response.status
            else:
                status = 503 if request.get(ERROR_REASON) == SHUTTING_DOWN else 500
            if body_count is not None:
                sent = body_count.size
            elif response is None or method == "HEAD" or status in (204, 304):
                sent = 0
            else:
                sent = response.content_length or 0
            if is_upload:
                metrics.uploads_in_flight.dec()
                if status >= 400:
                    reason = request.get(ERROR_REASON, "other")
                    metrics.uploads_rejected.labels(rejection_label(reason)).inc()
                elif UPLOADED_BYTES in request:
                    metrics.uploaded_bytes.inc(request[UPLOADED_BYTES])
            elif sent and kind == DOWNLOAD:
                metrics.downloaded_bytes.inc(sent)
            elif kind == QUERY:
                metrics.queries.labels("ok" if status < 400 else "refused").inc()
                metrics.query_duration.observe(elapsed)
                if status >= 400:
                    reason = request.get(ERROR_REASON, "other")
                    metrics.queries_refused.labels(rejection_label(reason)).inc()
            if (count := counted.get((method, route, status))) is None:
                count = counted[method, route, status] = metrics.requests.labels(
                    method, route, str(status)
                )
            count.inc()
            if (timer := timed.get((method, route))) is None:
                timer = timed[method, route] = metrics.latency.labels(method, route)
            timer.observe(elapsed)
            agent = request.headers.get("User-Agent", "-")
            sql = request.get(QUERY_SQL)
            shown = {} if sql is None else {"sql": sql[:_SQL_SHOWN]}
            access_log.info(
                "%s %s %s %d %dB %.1fms id=%s ua=%s%s",
                request.remote,
                request.method,
                request.path_qs,
                status,
                sent,
                elapsed * 1000,
                request_id,
                agent,
                "" if sql is None else f" sql={sql[:_SQL_SHOWN]!r}",
                extra={
                    **shown,
                    "request_id": request_id,
                    "method": request.method,
                    "route": route,
                    "path": request.path,
                    "status": status,
                    "bytes": sent,
                    "duration_ms": round(elapsed * 1000, 2),
                    "remote": request.remote,
                    "user_agent": agent,
                },
            )

    return observe


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Nothing else is checked, so a slow disk can't fail it."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the database answers, storage is writable, space above minimum. Both are
    probed at once within ``ready_timeout``: a hung dependency cannot hold the probe."""
    store = request.app[STORE_KEY]
    settings = request.app[SETTINGS_KEY]
    database, storage = await asyncio.gather(
        _probe("database", store.probe_database(), settings.ready_timeout),
        _probe("storage", store.probe_storage(), settings.ready_timeout),
    )
    checks = {"database": database, "storage": storage}
    free = store.free_bytes()
    checks["free_space"] = (
        "ok" if free is None or free >= settings.min_free_space else "below minimum"
    )
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        return problem_response(
            503,
            NOT_READY,
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
    """aiohttp logs a client's invalid HTTP with a traceback, as if the server had failed:
    make it one warning line. Installed on the ``aiohttp.server`` logger."""

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
    """One line, not a traceback, per failed reconnect of the pool: the outage is answered."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and record.levelno <= logging.WARNING:
            record.msg = f"{record.getMessage()}: {exc!r}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True
