"""The application factory: settings in, a ready aiohttp application out. No I/O at import."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from csvstore.config import Settings
from csvstore.db import SqliteDatabase
from csvstore.errors import error_middleware
from csvstore.ingest import UploadLimits
from csvstore.keys import LIMITS_KEY, SETTINGS_KEY, STORE_KEY
from csvstore.openapi import setup_openapi
from csvstore.routes import setup_routes
from csvstore.service import CsvStore
from csvstore.storage import LocalStorage

# JSON request bodies are a session id and a few options; 64 KiB is generous. Uploads are
# streamed and limited by max_upload_size instead, which this does not affect.
JSON_BODY_LIMIT = 64 * 1024


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=JSON_BODY_LIMIT)
    app[SETTINGS_KEY] = settings
    app[LIMITS_KEY] = UploadLimits(
        max_upload_size=settings.max_upload_size,
        chunk_size=settings.upload_chunk_size,
        read_timeout=settings.body_read_timeout,
    )
    app.cleanup_ctx.append(_store)
    setup_routes(app)
    setup_openapi(app)
    return app


async def _store(app: web.Application) -> AsyncIterator[None]:
    """Open the database and storage, check them against each other, close at shutdown."""
    settings = app[SETTINGS_KEY]
    db = SqliteDatabase(settings.database_path)
    await db.open()
    try:
        store = CsvStore(db, LocalStorage(settings.uploads_dir, settings.temp_dir))
        await store.startup_check()
        app[STORE_KEY] = store
        yield
    finally:
        await db.close()
