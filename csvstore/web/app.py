"""The application factory: settings in, a ready aiohttp application out. No I/O at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from csvstore.config import Settings
from csvstore.errors import DependencyUnavailable
from csvstore.maintenance.reconcile import startup_check
from csvstore.metrics import Metrics
from csvstore.service import CsvStore
from csvstore.uploads import UploadLimits
from csvstore.web.handlers import JSON_BODY_LIMIT
from csvstore.web.inflight import InFlight
from csvstore.web.keys import (
    INFLIGHT_KEY,
    LIMITS_KEY,
    METRICS_KEY,
    SETTINGS_KEY,
    STARTUP_CHECK_KEY,
    STORE_KEY,
)
from csvstore.web.limits import limits_middleware
from csvstore.web.observability import REQUEST_IDS_KEY, UPLOAD, RequestIds, observe_middleware
from csvstore.web.openapi import Documented, setup_openapi
from csvstore.web.proxies import forwarded_middleware, parse_networks
from csvstore.web.routes import ROUTES, route_kinds, setup_routes
from csvstore.web.security import add_security_headers, auth_middleware, load_keys, setup_cors
from csvstore.web.tus import setup_tus
from csvstore.wiring import open_store

log = logging.getLogger("csvstore")


def create_app(
    settings: Settings,
    *,
    startup_check: bool = True,
    worker_restarts: Callable[[], int] | None = None,
) -> web.Application:
    """``startup_check=False`` when a supervisor already ran it (one worker's check could
    remove another's upload in flight)."""
    keys = load_keys(settings)
    inflight = InFlight()
    metrics = Metrics()
    if worker_restarts is not None:
        metrics.watch_worker_restarts(worker_restarts)
    kinds = route_kinds()
    request_ids = RequestIds()
    middlewares: list[Middleware] = [observe_middleware(metrics, kinds, request_ids, inflight)]
    if keys:
        reads = frozenset(route.path for route in ROUTES if route.reads)
        middlewares.append(auth_middleware(keys, reads))
    if settings.trusted_proxies:
        # First: every other middleware (access log, limits) sees the client's address.
        middlewares.insert(0, forwarded_middleware(parse_networks(settings.trusted_proxies)))
    if settings.rate_limit is not None or settings.max_concurrent_uploads:
        # After the key check: a client is its verified key, else its address.
        uploads = {route for route, kind in kinds.items() if kind == UPLOAD}
        middlewares.append(
            limits_middleware(settings.rate_limit, settings.max_concurrent_uploads, uploads)
        )
    app = web.Application(middlewares=middlewares, client_max_size=JSON_BODY_LIMIT)
    app.on_response_prepare.append(add_security_headers)
    app.on_response_prepare.append(request_ids.stamp)
    app[REQUEST_IDS_KEY] = request_ids
    app[INFLIGHT_KEY] = inflight
    app[METRICS_KEY] = metrics
    app[SETTINGS_KEY] = settings
    app[LIMITS_KEY] = UploadLimits(
        max_upload_size=settings.max_upload_size,
        chunk_size=settings.upload_chunk_size,
        read_timeout=settings.body_read_timeout,
        analyse=settings.analyse_uploads,
        min_free_space=settings.min_free_space,
    )
    app[STARTUP_CHECK_KEY] = startup_check
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_retention_sweeper)
    app.cleanup_ctx.append(_journal_flusher)
    setup_routes(app)
    setup_tus(app)
    setup_openapi(
        app,
        Documented(
            api_keys=bool(keys),
            rate_limit=settings.rate_limit is not None,
            upload_limit=bool(settings.max_concurrent_uploads),
        ),
    )
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        setup_cors(app, origins)
    return app


async def _store(app: web.Application) -> AsyncIterator[None]:
    async with open_store(app[SETTINGS_KEY], app[METRICS_KEY]) as store:
        if app[STARTUP_CHECK_KEY]:
            await startup_check(store)
        app[STORE_KEY] = store
        yield


async def _retention_sweeper(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(
        sweep_forever(app[STORE_KEY], app[METRICS_KEY], app[SETTINGS_KEY].sweep_interval),
        name="retention-sweeper",
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _journal_flusher(app: web.Application) -> AsyncIterator[None]:
    """Sync journaled files every ``journal_interval`` seconds, and once more at shutdown:
    a clean stop leaves the journal empty."""
    store = app[STORE_KEY]
    interval = app[SETTINGS_KEY].journal_interval
    task = asyncio.create_task(flush_forever(store, interval), name="journal-flusher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await store.flush_journal()
    except Exception:  # what is left is written back by the next start-up check
        log.exception("journal flush at shutdown failed")


async def flush_forever(store: CsvStore, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await store.flush_journal()
        except DependencyUnavailable as exc:  # an outage, not a bug: one line, no traceback
            log.warning("journal flush failed: %s; retried", exc.detail)
        except Exception:  # the entries stay, and so the bytes are safe: retried next time
            log.exception("journal flush failed")
        try:  # bytes of deleted files the storage failed to remove (CsvStore._remove_bytes)
            await store.remove_leftovers()
        except Exception as exc:
            log.warning("removing leftover stored files failed (%r): retried", exc)


async def sweep_forever(store: CsvStore, metrics: Metrics, interval: float) -> None:
    while True:
        try:
            sessions, files = await store.expire_sessions()
        except DependencyUnavailable as exc:  # an outage, not a bug: one line, no traceback
            log.warning("retention sweep failed: %s; retried", exc.detail)
        except Exception:  # a failed sweep is retried next time; the service goes on
            log.exception("retention sweep failed")
        else:
            if sessions:
                metrics.sessions_expired.inc(sessions)
                metrics.files_expired.inc(files)
                log.info("retention: deleted %d expired session(s), %d file(s)", sessions, files)
        await asyncio.sleep(interval)
