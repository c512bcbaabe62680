"""Which database and which storage belong together: the store id.

At first use the database (``store_identity``, migration 0005) and the storage (a marker,
``STORE_MARKER``, beside the stored files) record the same random id. Every start, every
``check`` and ``migrate-to`` compare the two before anything is removed, and refuse a pair
that does not match -- a forgotten ``--database-url`` or ``--data-dir`` would otherwise
make every stored file look like a leftover -- and a storage folder that holds the
database. Both halves are created conditionally (an insert that keeps an existing row, a
marker that is only created where none is), so instances starting together agree on one id.
The database's half is written first: reading the marker first and the row second never
finds a marker that its database is only about to record.

A deployment from before the store id (neither half there) is adopted on its first start
when the two plausibly belong together; see :func:`_why_not_adopt`.
"""

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
    """Refuse a storage folder that holds the SQLite database: the database's files, and
    whatever else shares the folder, are not csvstore's stored files."""
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
    """The store id the database and the storage share, recorded in both at first use.

    Raises :class:`StoreMismatch` when they do not belong together. ``claim=False`` only
    compares (a ``migrate-to`` source, which is only read). ``repair`` records a pair
    without ids as one store even when it does not look like one (never two different ids).
    """
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
    """Why a database and a storage, one or both without an id, should not be recorded as
    one store; None when they plausibly are one.

    They are when the storage holds at least one of the files the database lists (an
    existing deployment), or when both are empty and the storage has no id yet (a new one,
    or one whose first start stopped between writing the two halves). Anything else --
    an empty database beside stored files, rows none of whose files are there, a storage
    that already belongs to a store this database never recorded -- is more likely the
    wrong database or storage than a store, and taking it for one would remove files.
    """
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
