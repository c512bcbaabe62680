"""Opens what settings name (database, storage, resumable-upload store) and builds the
service over them, once their store ids agree."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from csvstore.config import Settings
from csvstore.db.sqlite import SqliteDatabase
from csvstore.identity import check_placement, verify_store_id
from csvstore.metrics import Metrics, TimedDatabase, TimedStorage
from csvstore.query.engine import QueryEngine, QueryLimits
from csvstore.resumable.local import LocalPartialStore, PartialStore
from csvstore.service import CsvStore
from csvstore.storage.cache import FilePaths
from csvstore.storage.local import JOURNAL_MAX, LocalStorage, Storage

if TYPE_CHECKING:
    from csvstore.db.postgres import PostgresDatabase


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    claim: bool = True,
    repair: bool = False,
) -> AsyncIterator[CsvStore]:
    """The service over the database and storage that settings name, open (and migrated)
    for the duration, once their store ids match (``StoreMismatch`` otherwise). With
    ``metrics``, their operations are timed; ``claim``, ``repair``: :func:`verify_store_id`."""
    check_placement(settings)  # before the database is opened, which would create it
    full = settings.durability == "full"
    db: SqliteDatabase | PostgresDatabase
    if settings.uses_postgres:
        from csvstore.db.postgres import PostgresDatabase

        db = PostgresDatabase(settings.database_url, synchronous_commit=full)
    else:
        db = SqliteDatabase(settings.database_path, synchronous_full=full)
    await db.open()
    try:
        async with open_storage(settings) as storage:
            shared = settings.uses_postgres or settings.uses_s3

            def partials(published: Callable[[str], Awaitable[bool]]) -> PartialStore:
                return open_partials(settings, storage, published)

            if metrics is not None:
                metrics.watch_disk(storage)
            engine = QueryEngine(query_limits(settings))
            paths = FilePaths(
                storage,
                root=storage.root if isinstance(storage, LocalStorage) else None,
                folder=settings.data_dir / "query-cache",
                max_bytes=settings.query_cache_size,
            )
            try:  # the engine's threads end even when the store ids disagree
                store = CsvStore(
                    db if metrics is None else TimedDatabase(db, metrics),
                    storage if metrics is None else TimedStorage(storage, metrics),
                    default_ttl=settings.session_ttl,
                    shared=shared,
                    partials=partials,
                    engine=engine,
                    paths=paths,
                )
                await verify_store_id(store, settings, claim=claim, repair=repair)
                await paths.open()
                yield store
            finally:
                await engine.close()
                await paths.close()
    finally:
        await db.close()


def query_limits(settings: Settings) -> QueryLimits:
    return QueryLimits(
        timeout_s=settings.query_timeout,
        memory_bytes=settings.query_memory,
        max_rows=settings.query_max_rows,
        concurrency=settings.query_concurrency,
        threads=os.cpu_count() or 1,
    )


def open_partials(
    settings: Settings,
    storage: Storage,
    published: Callable[[str], Awaitable[bool]] | None = None,
) -> PartialStore:
    """Where resumable (tus) uploads wait for their last byte: the temp area's ``tus/`` beside
    local storage (published by a rename), the bucket beside S3 (a multipart upload each)."""
    if settings.uses_s3:
        from csvstore.resumable.s3 import S3PartialStore, tus_part_size
        from csvstore.storage.s3 import S3Storage

        assert isinstance(storage, S3Storage)
        return S3PartialStore(
            storage,
            part_size=tus_part_size(settings.s3_part_size, settings.max_upload_size),
            expiry=settings.tus_expiry,
            lease_seconds=settings.tus_lease,
            is_published=published,
        )
    assert isinstance(storage, LocalStorage)
    return LocalPartialStore(
        settings.temp_dir / "tus", storage.root, fsync=settings.durability == "full"
    )


@contextlib.asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    """The storage that settings name, a local folder or an S3 bucket (aiobotocore is
    imported only then, so a local set-up never loads it)."""
    if not settings.uses_s3:
        local = LocalStorage(
            settings.uploads_dir,
            settings.temp_dir,
            fsync=settings.durability == "full",
            journal_max=JOURNAL_MAX,
        )
        try:
            yield local
        finally:
            await local.close()
        return
    from csvstore.storage.s3 import S3Storage

    async with S3Storage.open(
        settings.storage,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        part_size=settings.s3_part_size,
        max_object_size=settings.max_upload_size,
    ) as s3:
        yield s3
