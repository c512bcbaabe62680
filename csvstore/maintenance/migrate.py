"""``csvstore migrate-to``: copy a deployment's rows and stored files, as they are, to
another database and storage. Bytes are streamed and checked against the row before it is
inserted, under an upload intent (docs/design/intents.md); running it again copies only
what is missing, so an interrupted migration is resumed by running it again."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field

from csvstore.config import Settings
from csvstore.config_values import parse_s3_url
from csvstore.crashpoints import crash_point
from csvstore.db.sqlite import Executor
from csvstore.intents import this_owner
from csvstore.model import FileCheck, Session, StoredFile
from csvstore.resumable.local import LocalPartialStore, PartialState
from csvstore.service import CsvStore
from csvstore.wiring import open_store

log = logging.getLogger("csvstore.migrate")

PAGE = 500


class MigrationError(Exception):
    """The target holds something that contradicts the source; nothing more is copied."""


@dataclass(slots=True)
class MigrationReport:
    sessions_copied: int = 0
    files_copied: int = 0
    bytes_copied: int = 0
    already_there: int = 0  # copied by a previous run (bytes checked)
    bytes_restored: int = 0  # files the target listed without their bytes, copied again
    bad_files: list[str] = field(default_factory=list)  # source bytes missing or not as recorded
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file id, why): not copied
    dropped_uploads: list[str] = field(default_factory=list)  # tus uploads left behind

    def summary(self) -> str:
        return (
            f"copied {self.sessions_copied} session(s) and {self.files_copied} file(s) "
            f"({self.bytes_copied} bytes); {self.already_there} already there; "
            f"{self.bytes_restored} file(s) listed in the target without their bytes, copied "
            f"again; {len(self.bad_files)} file(s) not copied because their bytes are missing "
            f"or differ from their row in the source; {len(self.failed)} file(s) not copied "
            "because the target refused them"
        )


async def migrate(
    source: Settings,
    target: Settings,
    *,
    page: int = PAGE,
    drop_uploads_in_progress: bool = False,
) -> MigrationReport:
    """Copy every session and file of ``source`` that ``target`` does not have yet."""
    report = MigrationReport()
    # The target gets a store id of its own: a copy is not the original.
    async with open_store(source, claim=False) as src, open_store(target) as dst:
        in_progress = await uploads_in_progress(src)
        if in_progress and not drop_uploads_in_progress:
            raise MigrationError(
                f"the source has {len(in_progress)} resumable (tus) upload(s) in progress, "
                f"whose acknowledged bytes would not be copied: {', '.join(in_progress)}. "
                "Let them finish (or expire) first, or pass --drop-uploads-in-progress"
            )
        report.dropped_uploads = in_progress
        # Nothing of the target's is removed: it may be live, with uploads in flight.
        await dst.storage.prepare(temp_min_age=math.inf)
        updated: dict[str, str] = {}
        after = ""
        while sessions := await src.db.read(
            functools.partial(src.repo.export_sessions, after=after, limit=page)
        ):
            for session in sessions:
                await _copy_session(dst, session, report)
                updated[session.id] = session.updated_at
            after = sessions[-1].id
        after = ""
        while files := await src.db.read(
            functools.partial(src.repo.export_files, after=after, limit=page)
        ):
            for file in files:
                await _copy_file(src, dst, file, report)
            after = files[-1].id
        # The target's insert trigger moved each session's updated_at; put the source's back.
        for session_pk, updated_at in updated.items():
            restore = functools.partial(
                dst.repo.restore_updated_at, pk=session_pk, updated_at=updated_at
            )
            await dst.db.write(restore)
        await dst.flush_journal()
    return report


async def _copy_session(dst: CsvStore, session: Session, report: MigrationReport) -> None:
    if await dst.db.write(functools.partial(dst.repo.import_session, session=session)):
        report.sessions_copied += 1
        return
    there = await dst.db.read(functools.partial(dst.repo.session_by_pk, pk=session.id))
    if there is None or there.session_id != session.session_id:
        raise MigrationError(
            f"the target already has a session {session.session_id!r} that is not the "
            "source's (another id): migrate into an empty database"
        )
    report.already_there += 1


async def uploads_in_progress(store: CsvStore) -> list[str]:
    """The ids of the resumable (tus) uploads still waiting for bytes: not copied."""
    partials = store.partials
    if partials is None:
        return []
    if isinstance(partials, LocalPartialStore):
        ids = await asyncio.to_thread(partials._ids)
    else:
        from csvstore.resumable.s3 import S3PartialStore

        assert isinstance(partials, S3PartialStore)
        ids = set(await partials._records())
    now = time.time()
    found = []
    for upload_id in sorted(ids):
        state: PartialState | None = await partials.get(upload_id)
        if state is not None and not state.completed and state.expires_at > now:
            found.append(upload_id)
    return found


async def _holds(dst: CsvStore, there: FileCheck) -> bool:
    """Whether the target's storage holds the bytes of a file its database lists."""
    stat = await dst.storage.stat(there.file_path)
    if stat is None or stat[0] != there.file_size:
        return False
    if not there.sha256:
        return True
    digest = hashlib.sha256()
    try:
        async for chunk in dst.storage.read(there.file_path):
            digest.update(chunk)
    except FileNotFoundError:
        return False
    return digest.hexdigest() == there.sha256


async def _copy_file(
    src: CsvStore, dst: CsvStore, row: StoredFile, report: MigrationReport
) -> None:
    there = await dst.db.read(functools.partial(dst.repo.file_by_pk, file_id=row.id))
    if there is not None:
        if (there.file_size, there.file_path, there.sha256) != (
            row.file_size,
            row.file_path,
            row.sha256,
        ):
            raise MigrationError(
                f"the target already has a file {row.id} that is not the source's "
                "(another size, name or digest): migrate into an empty database"
            )
        if await _holds(dst, there):
            report.already_there += 1
            return
        log.warning("file %s: listed in the target without its bytes; copying them", row.id)
    key = row.file_path
    if there is None:  # until the row commits, the intent keeps the check off these bytes
        add = functools.partial(dst.repo.add_intent, storage_key=key, owner=this_owner())
        await dst.db.write(add)
    writer = await dst.storage.begin(key)
    digest = hashlib.sha256()
    try:
        async for chunk in src.storage.read(key):
            digest.update(chunk)
            await writer.write(chunk)
    except FileNotFoundError:
        await writer.abort()
        await _forget_intent(dst, key, there)
        log.warning("file %s: no bytes at %s in the source; not copied", row.id, key)
        report.bad_files.append(row.id)
        return
    except BaseException:
        await writer.abort()
        await _forget_intent(dst, key, there)
        raise
    if writer.size != row.file_size or (row.sha256 and digest.hexdigest() != row.sha256):
        await writer.abort()
        await _forget_intent(dst, key, there)
        log.warning("file %s: its bytes differ from its row in the source; not copied", row.id)
        report.bad_files.append(row.id)
        return
    try:
        await writer.commit()
    except BaseException:
        await _forget_intent(dst, key, there)
        raise
    crash_point("migrate.bytes_copied")
    journal = writer.journal  # a small file on a local disk: kept with its row until synced

    if there is not None:
        if journal is not None:
            entry = functools.partial(dst.repo.add_journal_entry, file_id=row.id, data=journal)
            await dst.db.write(entry)
        report.bytes_restored += 1
        report.bytes_copied += writer.size
        return

    async def insert(x: Executor) -> bool:
        inserted = await dst.repo.import_file(x, row)
        if inserted and journal is not None:
            await dst.repo.add_journal_entry(x, row.id, journal)
        await dst.repo.delete_intent(x, key)
        return inserted

    try:
        inserted = await dst.db.write(insert)
    except Exception as exc:
        # A commit may succeed although the call raised: bytes go once the row is known absent.
        try:
            listed = await dst.db.read(functools.partial(dst.repo.file_by_pk, file_id=row.id))
        except Exception:
            raise MigrationError(
                f"file {row.id}: its commit failed ({exc}) and its outcome could not be "
                "read back; its bytes are left in the target, where 'check' keeps them if "
                "the row exists. Run migrate-to again"
            ) from exc
        if listed is None:
            await dst.storage.delete([key])
            await _forget_intent(dst, key, there)
            log.warning("file %s: not copied, its insert failed: %s", row.id, exc)
            report.failed.append((row.id, f"its insert failed: {exc}"))
            return
        log.warning("file %s: its commit raised (%s) but the row is there: kept", row.id, exc)
        inserted = True
    if not inserted:  # copied meanwhile by another run: keep its bytes, which are these
        report.already_there += 1
        return
    report.files_copied += 1
    report.bytes_copied += writer.size


async def _forget_intent(dst: CsvStore, key: str, there: FileCheck | None) -> None:
    """Drop the intent of bytes that are gone or listed; if that fails, the check does."""
    if there is not None:
        return  # none was recorded
    try:
        await dst.db.write(functools.partial(dst.repo.delete_intents, storage_keys=[key]))
    except Exception:
        log.warning("could not drop the intent for %s; the check will", key)


def shared_storage(source: Settings, target: Settings) -> str | None:
    """Where the source's stored files and the target's overlap, or None. A copy onto itself
    would remove source bytes whenever an insert failed; the source is only read."""
    if source.uses_s3 != target.uses_s3:
        return None
    if source.uses_s3:
        if source.s3_endpoint_url != target.s3_endpoint_url:
            return None
        (a_bucket, a), (b_bucket, b) = parse_s3_url(source.storage), parse_s3_url(target.storage)
        same = a_bucket == b_bucket and (a.startswith(b) or b.startswith(a))
        return f"s3://{a_bucket}/{a}" if same else None
    a_dir, b_dir = source.uploads_dir.resolve(), target.uploads_dir.resolve()
    return str(a_dir) if a_dir.is_relative_to(b_dir) or b_dir.is_relative_to(a_dir) else None
