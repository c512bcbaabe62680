"""Reconciling storage with the database, after a crash or on demand.

The invariant: storage holds exactly the files the database lists, each with the size and
digest recorded for it. The check restores it where it can do so without losing anything
a client was promised: journaled files are written back from the journal (storage.py: a
crash may have lost their unsynced bytes), temp files (uploads never acknowledged) and
stored files with no row (published, then the process died before the commit) are removed.
Rows whose bytes are missing or changed are reported, and removed only with ``repair`` -- a
person decides.

Only csvstore's own names are ever looked at (``storage.STORED_NAME``), and only once the
database and the storage are known to be one store's (csvstore/identity.py). Even then, a
database that lists no files at all beside stored files is more likely the wrong one than a
store whose every upload was lost: nothing is removed without ``repair``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field

from csvstore.crashpoints import crash_point
from csvstore.db.repo import Repo
from csvstore.db.sqlite import Operation
from csvstore.intents import owner_alive
from csvstore.model import FileCheck
from csvstore.service import CsvStore

log = logging.getLogger("csvstore.check")

# Checks on a live store (on demand, or at the start-up of one of several instances) spare
# temp files (multipart uploads on S3) of uploads that may still be streaming,
# however slowly.
TEMP_MIN_AGE = 3600.0


@dataclass(slots=True)
class CheckReport:
    journal_restored: int = 0  # small files written back from the journal
    temp_files_removed: int = 0
    partial_uploads_removed: int = 0  # broken or expired resumable uploads
    orphan_files_removed: int = 0
    intents_cleared: int = 0  # left by publishes that died before their commit
    # Stored files kept because the database lists none at all: more likely the wrong
    # database than leftovers; only ``repair`` removes them.
    unlisted_files_kept: int = 0
    missing_files: list[str] = field(default_factory=list)  # file ids whose bytes are gone
    mismatched_files: list[str] = field(default_factory=list)  # wrong size or digest
    rows_removed: int = 0
    files_checked: int = 0
    integrity: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        bad_db = self.integrity != ["ok"] and bool(self.integrity)
        unrepaired = len(self.missing_files) + len(self.mismatched_files) - self.rows_removed
        return unrepaired + int(bad_db) + self.unlisted_files_kept

    def summary(self) -> str:
        return (
            f"checked {self.files_checked} file(s): wrote back {self.journal_restored} "
            f"journaled file(s), removed {self.temp_files_removed} temp "
            f"file(s) and {self.orphan_files_removed} stored file(s) without a row, "
            f"cleared {self.intents_cleared} intent(s) of publishes that died, "
            f"{self.partial_uploads_removed} broken or expired resumable upload(s); "
            f"{len(self.missing_files)} row(s) with missing bytes, "
            f"{len(self.mismatched_files)} with wrong size or digest, "
            f"{self.rows_removed} row(s) removed; database integrity: "
            f"{', '.join(self.integrity) or 'not checked'}"
        ) + (
            f"; the database lists no files, so the {self.unlisted_files_kept} stored file(s) "
            "were kept: if this is the right database, 'check --repair' removes them"
            if self.unlisted_files_kept
            else ""
        )


async def reconcile(
    store: CsvStore,
    *,
    repair: bool = False,
    verify: bool = False,
    temp_min_age: float = 0.0,
) -> CheckReport:
    """Bring storage and database back in line; see the module docstring.

    ``verify`` also compares every file's size and SHA-256 (reads every byte).
    Stored files without a row are spared while a live intent names them (intents.py).
    ``temp_min_age`` likewise spares temp files of uploads that may still be streaming.
    """
    report = CheckReport()
    storage, db, repo = store.storage, store.db, store.repo
    # A publish whose process is known dead (its intent's owner) left its multipart upload,
    # however young: it goes now, not an hour later.
    abandoned = frozenset(
        i.storage_key for i in await db.read(repo.intents) if not owner_alive(i.owner, i.created_at)
    )
    report.temp_files_removed = await storage.prepare(
        temp_min_age=temp_min_age, abandoned=abandoned
    )
    report.journal_restored = await store.restore_journal()
    rows = await db.read(repo.files_for_check)
    if store.partials is not None:
        # Resumable (tus) uploads are not stale temp files: they stay. Broken or expired
        # ones go; one a crash caught between its publish and its record is marked done.
        report.partial_uploads_removed = await store.partials.reconcile(
            published={row.id for row in rows}, min_age=temp_min_age
        )
    on_disk = await storage.keys()
    # Read after the listing: a name listed there that is neither a file's nor a live
    # intent's was published by nobody who can still commit it (intents.py).
    committed, intents = await db.read(repo.names_in_use)
    live = {i.storage_key for i in intents if owner_alive(i.owner, i.created_at)}
    orphans = sorted(on_disk - committed - live)
    if orphans and store.partials is not None:
        # Nor is the object of a resumable upload whose completion was cut short before its
        # row: its next request publishes it.
        orphans = [key for key in orphans if not await store.partials.owns(key)]
    if on_disk and not committed and not repair:
        # Only this database's own leftovers (an intent names them) go; the rest is kept.
        ours = {i.storage_key for i in intents}
        report.unlisted_files_kept = len([key for key in orphans if key not in ours])
        orphans = [key for key in orphans if key in ours]
    for done, key in enumerate(orphans):
        await storage.delete([key])
        if done == 0:
            crash_point("check.orphan_removed")
    report.orphan_files_removed = len(orphans)
    # Dead intents go after their bytes (removed above as orphans, unless committed).
    for key in sorted({i.storage_key for i in intents} - live):
        crash_point("check.intent_cleared")
        await db.write(functools.partial(repo.delete_intent, storage_key=key))
        report.intents_cleared += 1

    bad_rows = []
    for row in rows:
        report.files_checked += 1
        if row.file_path not in on_disk:
            report.missing_files.append(row.id)
            bad_rows.append(row.id)
        elif verify and not await _bytes_match(store, row):
            report.mismatched_files.append(row.id)
            bad_rows.append(row.id)
    if repair:
        for file_id in bad_rows:
            removed: str | None = await db.write(_deleting(repo, file_id))
            if removed is not None:
                await storage.delete([removed])
                report.rows_removed += 1
    report.integrity = await db.integrity_check()
    if (
        report.temp_files_removed
        or report.journal_restored
        or report.partial_uploads_removed
        or orphans
        or report.intents_cleared
        or report.unlisted_files_kept
        or bad_rows
        or report.integrity != ["ok"]
    ):
        log.warning("%s", report.summary())
    return report


def _deleting(repo: Repo, file_id: str) -> Operation[str | None]:
    return lambda x: repo.delete_file(x, file_id)


async def _bytes_match(store: CsvStore, row: FileCheck) -> bool:
    stat = await store.storage.stat(row.file_path)
    if stat is None or stat[0] != row.file_size:
        return False
    if row.sha256 is None:
        return True
    digest = hashlib.sha256()
    async for chunk in store.storage.read(row.file_path):
        digest.update(chunk)
    return digest.hexdigest() == row.sha256


async def startup_check(store: CsvStore) -> CheckReport:
    """Remove what a crash may have left: temp files, and stored files with no row.

    Alone, every temp file found at start-up is a leftover. When shared, another
    instance may be streaming an upload (a temp file, a multipart upload): young ones
    are spared. Stored files are spared by their intents, alone or shared.
    """
    if store.shared:
        return await reconcile(store, temp_min_age=TEMP_MIN_AGE)
    return await reconcile(store)
