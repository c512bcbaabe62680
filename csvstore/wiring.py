"""Opens what settings name -- database, storage, resumable-upload store -- and builds the
service over them, once their store ids agree."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from csvstore.config import Settings
from csvstore.db.postgres import PostgresDatabase
from csvstore.db.sqlite import SqliteDatabase
from csvstore.identity import check_placement, verify_store_id
from csvstore.metrics import Metrics, TimedDatabase, TimedStorage
from csvstore.resumable.local import LocalPartialStore, PartialStore
from csvstore.service import CsvStore
from csvstore.storage.local import JOURNAL_MAX, LocalStorage, Storage


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    claim: bool = True,
    repair: bool = False,
) -> AsyncIterator[CsvStore]:
    """The database and storage that settings name, open (and migrated) for the duration,
    once their store ids match (csvstore/identity.py; ``StoreMismatch`` otherwise).

    With ``metrics``, database and storage operations are timed into them. ``claim`` and
    ``repair``: see :func:`verify_store_id`."""
    check_placement(settings)  # before the database is opened, which would create it
    full = settings.durability == "full"
    db: SqliteDatabase | PostgresDatabase
    if settings.uses_postgres:
        db = PostgresDatabase(settings.database_url, synchronous_commit=full)
    else:
        db = SqliteDatabase(settings.database_path, synchronous_full=full)
    await db.open()
    try:
        async with open_storage(settings) as storage:
            ttl = settings.session_ttl
            # Another instance may be writing to the same store: its checks must spare
            # uploads in flight (see CsvStore.startup_check).
            shared = settings.uses_postgres or settings.uses_s3
            if metrics is None:
                store = CsvStore(db, storage, default_ttl=ttl, shared=shared)
            else:
                metrics.watch_disk(storage)
                store = CsvStore(
                    TimedDatabase(db, metrics),
                    TimedStorage(storage, metrics),
                    default_ttl=ttl,
                    shared=shared,
                )

            async def published(file_id: str) -> bool:
                return await store.db.read(lambda x: store.repo.get_file(x, file_id)) is not None

            await verify_store_id(store, settings, claim=claim, repair=repair)
            store.partials = open_partials(settings, storage, published)
            yield store
    finally:
        await db.close()


def open_partials(
    settings: Settings,
    storage: Storage,
    published: Callable[[str], Awaitable[bool]] | None = None,
) -> PartialStore:
    """Where resumable (tus) uploads wait for their last byte. Beside local storage, the temp
    area's ``tus/`` (a complete upload is published by a rename); beside S3, the bucket (a
    multipart upload per tus upload, completed into the stored file; nothing on local disk)."""
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
    """The storage that settings name: a local folder, or an S3 bucket (client open for the
    duration; aiobotocore is imported only then, so a local set-up never loads it)."""
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
