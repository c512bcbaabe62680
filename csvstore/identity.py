"""The store id a database and a storage both record at first use, compared before anything
is removed: a forgotten ``--database-url`` must not make every stored file a leftover."""

from __future__ import annotations

import logging
import re
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from csvstore.config import Settings
from csvstore.timeutil import utc_now

if TYPE_CHECKING:
    from csvstore.service import CsvStore

log = logging.getLogger("csvstore")

_STORE_ID = re.compile(r"^[0-9a-f]{32}$")
REPAIR_HINT = (
    "Nothing was changed. If this is the right database and storage after all, "
    "'python -m csvstore check --repair' records them as one store (and then removes the "
    "stored files the database does not list)."
)


class StoreMismatch(Exception):
    """The database and the storage do not belong together; nothing was changed."""


def where(settings: Settings) -> tuple[str, str]:
    """The database and the storage as a person would name them (no password)."""
    if settings.uses_postgres:
        url = urlsplit(settings.database_url)
        database = f"PostgreSQL database {url.hostname}:{url.port or 5432}{url.path}"
    else:
        database = f"SQLite database {settings.database_path.resolve()}"
    storage = settings.storage if settings.uses_s3 else str(settings.uploads_dir.resolve())
    return database, f"storage {storage}"


def check_placement(settings: Settings) -> None:
    """Refuse a storage folder that holds the SQLite database (not csvstore's files)."""
    if settings.uses_s3 or settings.uses_postgres:
        return
    database = settings.database_path.resolve()
    folder = settings.uploads_dir.resolve()
    if database.is_relative_to(folder):
        raise StoreMismatch(
            f"the storage folder {folder} holds the database {database}: give the stored "
            "files a folder of their own (--storage; by default DATA_DIR/uploads), not the "
            "data folder or a folder with other files in it"
        )


async def verify_store_id(
    store: CsvStore, settings: Settings, *, claim: bool = True, repair: bool = False
) -> str | None:
    """The store id both share (recorded at first use, the database's half first), else
    :class:`StoreMismatch`. ``claim=False`` only compares; ``repair`` adopts any pair."""
    database, storage = where(settings)
    marker = await store.storage.read_store_id()
    recorded = await store.db.read(store.repo.get_store_id)
    if marker is not None and not _STORE_ID.match(marker):
        raise StoreMismatch(f"the {storage} has an unreadable store id marker: {marker[:80]!r}")
    if marker is not None and recorded is not None:
        if marker != recorded:
            raise StoreMismatch(_different(database, recorded, storage, marker))
        return recorded
    if not claim:
        return None
    listed = await store.db.read(store.repo.all_file_paths)
    stored = await store.storage.keys()
    reason = _why_not_adopt(recorded, marker, listed, stored)
    if reason is not None:
        message = f"the {database} and the {storage} do not look like one store: {reason}"
        if not repair:
            raise StoreMismatch(f"{message}. {REPAIR_HINT}")
        log.warning("%s; recorded as one store as --repair asks", message)
    if recorded is None:
        candidate = marker or uuid.uuid4().hex
        await store.db.write(lambda x: store.repo.claim_store_id(x, candidate, utc_now()))
        recorded = await store.db.read(store.repo.get_store_id)
        assert recorded is not None  # written just now, by us or by another instance
    if marker is None:
        marker = await store.storage.create_store_id(recorded)
    if marker != recorded:  # another instance, with another database, won the marker
        raise StoreMismatch(_different(database, recorded, storage, marker))
    log.info("store id %s recorded in the %s and the %s", recorded, database, storage)
    return recorded


def _different(database: str, recorded: str, storage: str, marker: str) -> str:
    return (
        f"the {database} belongs to store {recorded}, but the {storage} to store {marker}: "
        "they are not one store's database and storage (a forgotten --database-url, "
        "--data-dir or --storage?). Nothing was changed."
    )


def _why_not_adopt(
    recorded: str | None, marker: str | None, listed: set[str], stored: set[str]
) -> str | None:
    """Why a database and a storage, one or both without an id, should not be adopted as
    one store; None when they share a file, or both are empty and unmarked. Anything else
    is more likely the wrong one, and adopting it would remove files."""
    if listed & stored:
        return None
    if marker is not None:
        return f"the storage belongs to store {marker}, which this database never recorded"
    if not listed and not stored:
        return None
    if not listed:
        return f"the database lists no files, but the storage holds {len(stored)}"
    return (
        f"none of the {len(listed)} file(s) the database lists is in the storage "
        f"(it holds {len(stored)})"
    )
