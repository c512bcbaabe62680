"""The domain, independent of HTTP: sessions, stored files and their life cycle, and the
only door web/ uses to the database and storage. Its invariant (stored files are exactly
those the database lists; bytes published before their row, removed after it) is told in
docs/design/intents.md."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import orjson

from csvstore.analysis.pages import RowsPage
from csvstore.analysis.rows import read_rows
from csvstore.analysis.stream import FileFacts
from csvstore.crashpoints import crash_point
from csvstore.db.repo import NewFile, Repo
from csvstore.db.sqlite import Database
from csvstore.errors import (
    DependencyUnavailable,
    FileNotFound,
    NotFound,
    SessionExists,
    SessionNotFound,
    StoredFileUnavailable,
)
from csvstore.intents import REMOVING, this_owner
from csvstore.model import Session, StoredFile
from csvstore.query.engine import (
    ColumnSummary,
    QueryEngine,
    QueryResult,
    TableInfo,
    TableSource,
    table_names,
)
from csvstore.query.sandbox import ENCODINGS
from csvstore.storage.cache import FilePaths
from csvstore.storage.local import Storage, StorageWriter
from csvstore.timeutil import format_utc, utc_now

# What begin_upload hands out: the caller writes an upload's bytes, the service commits them.
UploadWriter: TypeAlias = StorageWriter

if TYPE_CHECKING:
    from csvstore.resumable.local import PartialStore

log = logging.getLogger("csvstore")

STORED_CONTENT_TYPE = "text/csv"
# How long a publish waits out a database restart: longer than one, within a client's patience.
PATIENCE = 30.0
PATIENCE_PAUSE = 0.25
T = TypeVar("T")

PartialsFactory = Callable[[Callable[[str], Awaitable[bool]]], "PartialStore"]


@dataclass(frozen=True, slots=True)
class Summary:
    file_id: str
    columns: list[dict[str, object]]  # engine.ColumnSummary as JSON
    computed_at: str


@dataclass(frozen=True, slots=True)
class Published:
    file: StoredFile
    duplicate: bool  # True: an identical file was already in the session; this is it


class CsvStore:
    def __init__(
        self,
        db: Database,
        storage: Storage,
        *,
        default_ttl: float = 0.0,
        shared: bool = False,
        partials: PartialsFactory | None = None,
        engine: QueryEngine | None = None,
        paths: FilePaths | None = None,
    ) -> None:
        self._db = db
        self._engine = engine
        self._paths = paths
        self._summarizing: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._storage = storage
        self._repo = Repo(db.queries)
        self.default_ttl = default_ttl  # seconds; 0: sessions live until deleted
        self.shared = shared  # other instances may use the same database and storage
        self._partials = None if partials is None else partials(self.is_published)
        # Journal entries up to this number saw a failed sync: only a rewrite may clear them.
        self._sync_failed_up_to = 0
        self._leftovers: set[str] = set()  # stored names whose removal failed
        self._stale_intents: set[str] = set()  # of removed bytes, whose drop failed
        self._unsettled: dict[str, tuple[str, bool]] = {}  # key -> (file id, holds_upload)

    # Read-only, for maintenance and the tus engine: web/ calls the methods below.

    @property
    def db(self) -> Database:
        return self._db

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def repo(self) -> Repo:
        return self._repo

    @property
    def partials(self) -> PartialStore | None:
        return self._partials

    async def create_session(self, session_id: str, *, ttl_seconds: float | None = None) -> Session:
        """A new session; it expires ``ttl_seconds`` after creation (None: the default TTL)."""
        moment = datetime.now(UTC)
        now = format_utc(moment)
        ttl = self.default_ttl if ttl_seconds is None else ttl_seconds
        expires_at = format_utc(moment + timedelta(seconds=ttl)) if ttl else None
        created = await self._db.write(
            lambda x: self._repo.create_session(
                x,
                id=str(uuid.uuid4()),
                session_id=session_id,
                created_at=now,
                expires_at=expires_at,
            )
        )
        if created is None:
            raise SessionExists(f"session {session_id!r} already exists")
        return created

    async def get_session(self, session_id: str) -> Session:
        session = await self._db.read(lambda x: self._repo.get_session_with_files(x, session_id))
        if session is None:
            raise _session_not_found(session_id)
        return session

    async def require_session(self, session_id: str) -> None:
        if await self._db.read(lambda x: self._repo.get_session(x, session_id)) is None:
            raise _session_not_found(session_id)

    async def list_sessions(self, *, after: str, limit: int) -> list[Session]:
        return await self._db.read(
            lambda x: self._repo.list_sessions_with_files(x, after=after, limit=limit)
        )

    async def list_sessions_json(self, *, after: str, limit: int) -> list[tuple[str, str]]:
        """A page of sessions already rendered as JSON objects: (session id, object)."""
        return await self._db.read(
            lambda x: self._repo.list_sessions_json(x, after=after, limit=limit)
        )

    async def expire_sessions(self, *, batch: int = 100) -> tuple[int, int]:
        """Delete the sessions whose time is up, as DELETE would; (sessions, files) removed."""
        sessions = files = 0
        while True:
            expired: list[str] = await self._db.read(
                functools.partial(self._repo.expired_sessions, now=utc_now(), limit=batch)
            )
            gone = set()
            for session_id in expired:
                try:
                    files += await self._delete_session(session_id, partials=False)
                    sessions += 1
                    gone.add(session_id)
                except NotFound:  # deleted by someone else meanwhile
                    pass
            await self._remove_partials(gone)
            if len(expired) < batch:
                return sessions, files

    async def delete_session(self, session_id: str) -> None:
        await self._delete_session(session_id)

    async def _delete_session(self, session_id: str, *, partials: bool = True) -> int:
        """Delete a session's rows, then its bytes and resumable uploads; how many files."""
        # The keys become intents with the rows' delete: bytes left behind are known leftovers.
        keys = await self._db.write(
            lambda x: self._repo.delete_session(x, session_id, intent_owner=REMOVING)
        )
        if keys is None:
            raise _session_not_found(session_id)
        crash_point("delete.row_removed")
        await self._remove_bytes(keys)
        if partials:
            await self._remove_partials({session_id})
        return len(keys)

    async def _remove_partials(self, session_ids: set[str]) -> None:
        """End the resumable uploads into these deleted sessions (one being written: later)."""
        if self._partials is None or not session_ids:
            return
        try:
            removed = await self._partials.remove_for_sessions(session_ids)
        except Exception:
            log.warning("could not remove the resumable uploads of deleted sessions", exc_info=True)
            return
        if removed:
            log.info("removed %d resumable upload(s) of deleted session(s)", removed)

    async def session_exists(self, session_id: str) -> bool:
        return await self._db.read(lambda x: self._repo.get_session(x, session_id)) is not None

    @staticmethod
    def new_file_key() -> tuple[str, str]:
        """A fresh file id and its storage key."""
        file_id = str(uuid.uuid4())
        return file_id, f"{file_id}.csv"

    # Uploads: what web/ingest.py and resumable/engine.py need of the storage (issue 16).

    async def begin_upload(self, file_id: str | None = None) -> tuple[str, StorageWriter]:
        """A file id (fresh unless given) and a writer for its bytes."""
        file_id, key = self.new_file_key() if file_id is None else (file_id, f"{file_id}.csv")
        return file_id, await self.storage.begin(key)

    def free_bytes(self) -> int | None:
        return self.storage.free_bytes()

    async def probe_database(self) -> None:
        await self._db.read(self._repo.ping)

    async def probe_storage(self) -> None:
        await self._storage.probe_writable()

    async def publish_upload(
        self,
        writer: StorageWriter,
        *,
        file_id: str,
        session_id: str,
        original_filename: str,
        facts: FileFacts,
        dedupe: bool = False,
    ) -> Published:
        """Make a received upload durable and visible, or remove it; shielded from cancels."""
        new = NewFile(
            id=file_id,
            session_id=session_id,
            filename=writer.key,
            original_filename=original_filename,
            file_size=writer.size,
            content_type=STORED_CONTENT_TYPE,
            file_path=writer.key,
            created_at=utc_now(),
            facts=facts,
        )
        if dedupe:
            existing = await self._db.read(
                lambda x: self._repo.find_duplicate(x, session_id, facts.sha256)
            )
            if existing is not None:
                await writer.abort()
                return Published(existing, duplicate=True)
        return await asyncio.shield(self._publish(writer, new, dedupe))

    async def _publish(self, writer: StorageWriter, new: NewFile, dedupe: bool) -> Published:
        # The intent first: until the row commits, reconcile must not take the bytes for an orphan.
        add_intent = functools.partial(
            self._repo.add_intent, storage_key=writer.key, owner=this_owner()
        )
        try:
            # Needs visibility, not durability: a power cut ends its owner too.
            await self._patiently(lambda: self._db.write(add_intent, durable=False))
        except BaseException as exc:
            if not _kept_for_upload(writer, exc):
                await writer.abort()
            raise
        crash_point("publish.intent_committed")
        try:
            await writer.commit()
        except BaseException:
            await self._forget_intent(writer.key)
            raise
        crash_point("publish.bytes_published")
        if writer.journal is not None:  # visible, not yet durable: the row carries the bytes
            new = dataclasses.replace(new, journal=writer.journal)
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                if dedupe:  # checked again in the transaction: a twin may have committed
                    row, duplicate = await self._db.write(
                        lambda x: self._repo.insert_file_unless_duplicate(x, new)
                    )
                else:
                    row = await self._db.write(lambda x: self._repo.insert_file(x, new))
                    duplicate = False
                break
            except BaseException as exc:
                try:
                    row = await self._patiently(
                        lambda: self._db.read(lambda x: self._repo.get_file(x, new.id))
                    )
                except Exception:
                    log.warning(
                        "file %s: its commit failed and could not be read back; its bytes and "
                        "intent stay until the row is read (retried)",
                        new.id,
                    )
                    self._unsettled[writer.key] = (new.id, writer.holds_upload)
                    raise
                if row is not None:  # committed after all (a connection lost around COMMIT)
                    duplicate = False
                    break
                if isinstance(exc, DependencyUnavailable) and time.monotonic() < deadline:
                    continue
                if _kept_for_upload(writer, exc):
                    await self._forget_intent(writer.key)
                    raise
                await self._remove_bytes([writer.key])
                raise
        crash_point("publish.row_committed")
        if row is None:  # the session was deleted while the upload streamed in
            await self._storage.delete([writer.key])
            raise _session_not_found(new.session_id)
        if duplicate:
            await self._storage.delete([writer.key])
        return Published(row, duplicate=duplicate)

    @staticmethod
    async def _patiently(call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again while the database is unavailable, for up to PATIENCE seconds."""
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                return await call()
            except DependencyUnavailable as exc:
                if exc.dependency != "database" or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(PATIENCE_PAUSE)

    async def _remove_bytes(self, keys: list[str]) -> None:
        """Remove bytes no row lists any more, then their intents; retried if storage fails."""
        if self._paths is not None:
            self._paths.forget(keys)
        try:
            await self._storage.delete(keys)
        except Exception as exc:
            log.warning("could not remove %d stored file(s) (%r): retried", len(keys), exc)
            self._leftovers.update(keys)
            return
        await self._forget_intents(keys)

    async def remove_leftovers(self) -> int:
        """Retry failed removals, intent drops, row read-backs (raises if they fail); how many."""
        for key, (file_id, kept) in sorted(self._unsettled.items()):
            row = await self._db.read(functools.partial(self._repo.get_file, file_id=file_id))
            del self._unsettled[key]
            if row is None and kept:
                await self._forget_intents([key])
            elif row is None:
                await self._remove_bytes([key])
        if self._stale_intents:
            stale = sorted(self._stale_intents)
            await self._db.write(functools.partial(self._repo.delete_intents, storage_keys=stale))
            self._stale_intents.difference_update(stale)
        if not self._leftovers:
            return 0
        keys = sorted(self._leftovers)
        await self._storage.delete(keys)
        self._leftovers.difference_update(keys)
        await self._forget_intents(keys)
        log.info("removed %d stored file(s) left by a failed removal", len(keys))
        return len(keys)

    async def _forget_intent(self, key: str) -> None:
        await self._forget_intents([key])

    async def _forget_intents(self, keys: list[str]) -> None:
        """Drop intents whose bytes are gone; on failure :meth:`remove_leftovers` retries."""
        if not keys:
            return
        try:
            await self._db.write(functools.partial(self._repo.delete_intents, storage_keys=keys))
        except Exception:
            log.warning("could not drop the intents of %d file(s): retried", len(keys))
            self._stale_intents.update(keys)

    async def flush_journal(self) -> int:
        """Make the journaled files durable, forget their entries; the seq flushed up to (0:
        none). After a failed sync (not reported twice) entries are written back instead."""
        seq = await self._db.read(self._repo.journal_high_water)
        if seq is None:
            return 0
        if not self._sync_failed_up_to:
            try:
                await self._storage.sync()
            except OSError as exc:
                log.warning("syncing the uploads folder failed (%s): writing files back", exc)
                self._sync_failed_up_to = seq
        if self._sync_failed_up_to:
            await self.restore_journal(up_to=self._sync_failed_up_to)
            self._sync_failed_up_to = 0
            return seq
        crash_point("flush.synced")
        await self._db.write(lambda x: self._repo.clear_journal(x, seq))
        return seq

    async def restore_journal(self, *, up_to: int = 2**62, batch: int = 100) -> int:
        """Write journaled files back, fsynced, and forget their entries; how many."""
        restored = after = 0
        while True:
            entries = await self._db.read(
                functools.partial(self._repo.journal_entries, after=after, up_to=up_to, limit=batch)
            )
            for entry in entries:
                await self._storage.restore(entry.file_path, entry.data)
                crash_point("restore.file_written")
                # A delete may have removed the row and the file just before the rewrite.
                still_listed = functools.partial(self._repo.get_file, file_id=entry.file_id)
                if await self._db.read(still_listed) is None:
                    await self._storage.delete([entry.file_path])
            seqs = [entry.seq for entry in entries]
            if seqs:
                await self._db.write(
                    functools.partial(self._repo.delete_journal_entries, seqs=seqs)
                )
                restored += len(seqs)
                after = seqs[-1]
            if len(entries) < batch:
                return restored

    async def find_file(self, file_id: str) -> StoredFile | None:
        return await self._db.read(lambda x: self._repo.get_file(x, file_id))

    async def file_origin(self, file_id: str) -> tuple[int, str, str, str] | None:
        """(size, original name, created at, session id), or None."""
        return await self._db.read(lambda x: self._repo.file_origin(x, file_id))

    async def get_file(self, file_id: str) -> StoredFile:
        row = await self._db.read(lambda x: self._repo.get_file(x, file_id))
        if row is None:
            raise _file_not_found(file_id)
        return row

    async def delete_file(self, file_id: str) -> None:
        key = await self._db.write(
            lambda x: self._repo.delete_file(x, file_id, intent_owner=REMOVING)
        )
        if key is None:
            raise _file_not_found(file_id)
        crash_point("delete.row_removed")
        await self._remove_bytes([key])

    async def is_published(self, file_id: str) -> bool:
        return await self._db.read(lambda x: self._repo.get_file(x, file_id)) is not None

    async def stored_size(self, file: StoredFile) -> int | None:
        """None when the stored bytes are missing."""
        stat = await self._storage.stat(file.file_path)
        return None if stat is None else stat[0]

    def open_file_bytes(
        self, file: StoredFile, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self._storage.read(file.file_path, start, length)

    async def read_rows(
        self, file: StoredFile, offset: int, limit: int, *, max_bytes: int, cell_limit: int
    ) -> RowsPage:
        try:
            return await read_rows(
                self._storage, file, offset, limit, max_bytes=max_bytes, cell_limit=cell_limit
            )
        except FileNotFoundError:
            raise StoredFileUnavailable(
                f"the stored bytes of file {file.id} are missing: its rows cannot be read"
            ) from None

    # Queries (issue 20): the engine reads local paths of the session's files, nothing else.

    def _query_side(self) -> tuple[QueryEngine, FilePaths]:
        if self._engine is None or self._paths is None:
            raise RuntimeError("this CsvStore was built without a query engine")
        return self._engine, self._paths

    @contextlib.asynccontextmanager
    async def _sources(self, named: dict[str, StoredFile]) -> AsyncIterator[dict[str, TableSource]]:
        _, paths = self._query_side()
        wanted = [(f.file_path, f.file_size, _convert_from(f)) for f in named.values()]
        async with paths.paths(wanted) as local:
            sources = {
                name: TableSource.of(f, path)
                for (name, f), path in zip(named.items(), local, strict=True)
            }
            # Files DuckDB cannot decode were copied as UTF-8.
            yield {
                name: s if w[2] is None else _as_utf8(s)
                for (name, s), w in zip(sources.items(), wanted, strict=True)
            }

    def _copies(self, files: Iterable[StoredFile]) -> bool:
        """Whether reading ``files`` copies any (S3, or made UTF-8)."""
        return self._query_side()[1].copies([(f.file_path, 0, _convert_from(f)) for f in files])

    async def _session_tables(self, session_id: str, sql: str | None) -> dict[str, StoredFile]:
        """The session's files by table name; with ``sql``, only the ones it reads when the
        others would be copied for nothing (S3, files made UTF-8)."""
        engine, _ = self._query_side()
        files = list((await self.get_session(session_id)).csv_files or ())
        named = dict(zip(table_names([TableSource.of(f, "") for f in files]), files, strict=True))
        if sql is not None and self._copies(files):
            used = await engine.tables_read(sql, list(named))
            named = {name: f for name, f in named.items() if name in used}
        return named

    async def query_tables(self, session_id: str) -> list[TableInfo]:
        engine, _ = self._query_side()
        named = await self._session_tables(session_id, None)
        if not self._copies(named.values()):
            async with self._sources(named) as sources:
                return await engine.tables(sources)
        found: list[TableInfo] = []  # one copy at a time: the cache need hold only the largest
        for name, file in named.items():
            async with self._sources({name: file}) as sources:
                found += await engine.tables(sources)
        return found

    async def run_query(self, session_id: str, sql: str, limit: int) -> QueryResult:
        engine, _ = self._query_side()
        named = await self._session_tables(session_id, sql)
        async with self._sources(named) as sources:
            return await engine.run(sources, sql, limit)

    async def query_csv(self, session_id: str, sql: str) -> AsyncGenerator[bytes, None]:
        """The result as CSV; every refusal is raised by the first ``__anext__``."""
        engine, _ = self._query_side()
        named = await self._session_tables(session_id, sql)
        async with self._sources(named) as sources:
            chunks = engine.stream_csv(sources, sql)
            try:
                async for chunk in chunks:
                    yield chunk
            finally:  # a client gone mid-result frees its query slot now, not at GC
                close = getattr(chunks, "aclose", None)
                if close is not None:
                    await close()

    async def file_summary(self, file_id: str) -> Summary:
        """Computed once, then read from the database (deleted with the file)."""
        kept = await self._db.read(lambda x: self._repo.get_summary(x, file_id))
        if kept is None:
            # One computation per file in this process; callers meanwhile wait for its row.
            lock = self._summarizing.setdefault(file_id, asyncio.Lock())
            async with lock:
                kept = await self._db.read(lambda x: self._repo.get_summary(x, file_id))
                if kept is None:
                    kept = await self._summarize(file_id)
        return Summary(file_id, orjson.loads(kept[0]), kept[1])

    async def _summarize(self, file_id: str) -> tuple[str, str]:
        engine, _ = self._query_side()
        file = await self.get_file(file_id)
        async with self._sources({"t": file}) as sources:
            columns = await engine.summarize(sources["t"])
        summary = orjson.dumps([_column_json(c) for c in columns]).decode()
        await self._db.write(lambda x: self._repo.insert_summary(x, file_id, summary, utc_now()))
        # Another instance's may have been kept instead: answer with the one kept.
        kept = await self._db.read(lambda x: self._repo.get_summary(x, file_id))
        if kept is None:  # deleted meanwhile
            raise _file_not_found(file_id)
        return kept


def _convert_from(file: StoredFile) -> str | None:
    """The encoding to copy a file to UTF-8 from, for the engine; None: it reads the file."""
    encoding = file.encoding or "utf-8"
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        return None  # not a codec Python knows: the engine says what it can't read
    return encoding if codec not in ENCODINGS or file.invalid_bytes else None


def _as_utf8(source: TableSource) -> TableSource:
    dialect = dataclasses.replace(source.dialect, encoding="utf-8")
    return dataclasses.replace(source, dialect=dialect)


def _column_json(column: ColumnSummary) -> dict[str, object]:
    out = dataclasses.asdict(column)
    out["top"] = [{"value": value, "count": count} for value, count in column.top]
    return out


def _session_not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"session {session_id!r} not found")


def _file_not_found(file_id: str) -> FileNotFound:
    return FileNotFound(f"file {file_id!r} not found")


def _kept_for_upload(writer: StorageWriter, exc: BaseException) -> bool:
    """An outage: a tus upload's object stays for its next request, which publishes it."""
    return writer.holds_upload and isinstance(exc, DependencyUnavailable)
