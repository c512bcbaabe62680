"""Reconciling storage with the database (storage holds exactly the files it lists), after a
crash or on demand; rows whose bytes are missing or changed go only with ``repair``. Why a
live intent spares a name: docs/design/intents.md."""

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

# On a live store, temp files younger than this may be uploads still streaming.
TEMP_MIN_AGE = 3600.0


@dataclass(slots=True)
class CheckReport:
    journal_restored: int = 0
    temp_files_removed: int = 0
    partial_uploads_removed: int = 0  # broken or expired resumable uploads
    orphan_files_removed: int = 0
    intents_cleared: int = 0  # left by publishes that died before their commit
    # Kept because the database lists no files at all: more likely the wrong database.
    unlisted_files_kept: int = 0
    missing_files: list[str] = field(default_factory=list)  # file ids
    mismatched_files: list[str] = field(default_factory=list)  # wrong size or digest
    rows_removed: int = 0
    files_checked: int = 0
    integrity: list[str] = field(default_factory=list)
    found_any: bool = False  # anything removed, restored, kept or wrong

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
    """Bring storage and database back in line. ``verify`` also compares every file's size
    and SHA-256; ``temp_min_age`` spares temp files of uploads that may still be streaming."""
    report = CheckReport()
    storage, db, repo = store.storage, store.db, store.repo
    # A publish whose process is known dead left its multipart upload: it goes now.
    abandoned = frozenset(
        i.storage_key for i in await db.read(repo.intents) if not owner_alive(i.owner, i.created_at)
    )
    report.temp_files_removed = await storage.prepare(
        temp_min_age=temp_min_age, abandoned=abandoned
    )
    report.journal_restored = await store.restore_journal()
    rows = await db.read(repo.files_for_check)
    if store.partials is not None:
        # One a crash caught between its publish and its record is marked done.
        report.partial_uploads_removed = await store.partials.reconcile(
            published={row.id for row in rows}, min_age=temp_min_age
        )
    on_disk = await storage.keys()
    # Read after the listing: a name neither a file's nor a live intent's is an orphan.
    committed, intents = await db.read(repo.names_in_use)
    live = {i.storage_key for i in intents if owner_alive(i.owner, i.created_at)}
    orphans = sorted(on_disk - committed - live)
    if orphans and store.partials is not None:
        # Nor a resumable upload's object cut short before its row: its next request commits.
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
    report.found_any = bool(
        report.temp_files_removed
        or report.journal_restored
        or report.partial_uploads_removed
        or orphans
        or report.intents_cleared
        or report.unlisted_files_kept
        or bad_rows
        or report.integrity != ["ok"]
    )
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
    """Remove what a crash may have left; when shared, another instance's young temp files
    (uploads streaming) are spared."""
    report = await reconcile(store, temp_min_age=TEMP_MIN_AGE if store.shared else 0.0)
    if report.found_any:  # `csvstore check` prints its report instead
        log.warning("%s", report.summary())
    return report
