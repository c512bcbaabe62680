"""The SQLite database: ``read(op)`` runs an operation (an async function over an
:class:`Executor`) on a read connection, ``write(op)`` inside a write transaction. All
writes go through one connection on a thread of its own, committed in batches (group
commit): one fsync covers many uploads, and writers never interleave."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import aiosqlite

from csvstore.db.queries import SQL_DIR, Queries, Query, load_migrations
from csvstore.errors import InsufficientStorage
from csvstore.timeutil import utc_now

log = logging.getLogger("csvstore.db")

# As long as PRAGMA busy_timeout lets a connection wait for another's lock.
_WAL_RETRY_S = 10.0

Row = dict[str, Any]
T = TypeVar("T")


class Executor(Protocol):
    """What an operation may do: run a named query and get rows back as dicts."""

    async def one(self, query: Query, params: Mapping[str, Any] | None = None) -> Row | None: ...

    async def all(self, query: Query, params: Mapping[str, Any] | None = None) -> list[Row]: ...


Operation = Callable[[Executor], Awaitable[T]]


class Database(Protocol):
    queries: Queries

    async def read(self, op: Operation[T]) -> T: ...

    async def write(self, op: Operation[T], *, durable: bool = True) -> T:
        """``op`` in a write transaction. ``durable=False``: visible to every connection
        once it returns, but on SQLite a power cut may take it back (docs/design/intents.md)."""
        ...

    async def integrity_check(self) -> list[str]:
        """The engine's own consistency check; ``["ok"]`` when all is well."""
        ...

    async def close(self) -> None: ...


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    # The extended code (SQLITE_BUSY_RECOVERY, ...) keeps the primary one in its low byte.
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


class _SqliteExecutor:
    __slots__ = ("_conn",)

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def all(self, query: Query, params: Mapping[str, Any] | None = None) -> list[Row]:
        with _storage_errors():
            rows = await self._conn.execute_fetchall(query.sql, params or {})
        return list(rows)  # type: ignore[arg-type]  # rows are dicts via the row factory

    async def one(self, query: Query, params: Mapping[str, Any] | None = None) -> Row | None:
        rows = await self.all(query, params)
        return rows[0] if rows else None


class _ThreadExecutor:
    """The Executor of the write thread: its methods finish without ever suspending."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def all(self, query: Query, params: Mapping[str, Any] | None = None) -> list[Row]:
        with _storage_errors():
            return self._conn.execute(query.sql, params or {}).fetchall()

    async def one(self, query: Query, params: Mapping[str, Any] | None = None) -> Row | None:
        rows = await self.all(query, params)
        return rows[0] if rows else None


def _run_to_end(operation: Awaitable[T]) -> T:
    """Run an operation on the write thread, where each ``await`` completes at once."""
    steps = operation.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    steps.close()
    raise RuntimeError("a write operation awaited something other than its queries")


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """A full disk under SQLite is the client's 507, not a 500 with a traceback."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "full" in str(exc).lower():
            raise InsufficientStorage(
                "the server's disk is full: the database could not record the change"
            ) from exc
        raise


def split_statements(script: str) -> list[str]:
    """Split a SQL script into statements, keeping trigger bodies (``BEGIN ... END;``) whole."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        line.strip().startswith("--") or not line.strip() for line in buffer.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement at the end of the script: {buffer!r}")
    return statements


@dataclass(frozen=True, slots=True)
class _Pending:
    op: Operation[Any]
    future: asyncio.Future[Any]
    durable: bool


@dataclass(frozen=True, slots=True)
class _Outcome:
    value: Any = None
    error: Exception | None = None


def _settle(batch: list[_Pending], outcomes: list[_Outcome]) -> None:
    for pending, outcome in zip(batch, outcomes, strict=True):
        if pending.future.done():
            continue
        if outcome.error is not None:
            pending.future.set_exception(outcome.error)
        else:
            pending.future.set_result(outcome.value)


class SqliteDatabase:
    """SQLite in WAL mode: one writer task with group commit, a few read connections."""

    # Bounded so one transaction (and the wait of its first caller) stays short.
    MAX_BATCH = 256

    def __init__(
        self,
        path: Path,
        *,
        readers: int = 2,
        synchronous_full: bool = True,
        sql_dir: Path = SQL_DIR,
    ) -> None:
        self.path = path
        self.queries = Queries(sql_dir)
        self._sql_dir = sql_dir
        self._reader_count = readers
        self._synchronous_full = synchronous_full
        self._writer: sqlite3.Connection | None = None
        self._writer_full = synchronous_full  # the writer connection's synchronous setting
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = 0
        # None is the sentinel that tells the writer to stop once the queue before it is done.
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(self._enable_wal)
            migrator = await self._connect()
            try:
                await self._migrate(migrator)
            finally:
                await migrator.close()
            for _ in range(self._reader_count):
                self._readers.append(await self._connect())
            self._writer = await self._on_writer_thread(self._connect_writer)
        except BaseException:
            # aiosqlite's threads are not daemons: one left open keeps the process alive.
            await self.close()
            raise
        self._writer_task = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    def _enable_wal(self) -> None:
        """Put the file in WAL mode once, before any other connection opens it. On a new
        file SQLite answers "locked" at once, not after the busy timeout, to processes
        opening it together: retried."""
        deadline = time.monotonic() + _WAL_RETRY_S
        with contextlib.closing(self._plain_connection()) as conn:
            while True:
                try:
                    conn.execute(self.queries.pragma_wal.sql)
                    return
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(0.01)

    def _plain_connection(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    def _pragmas(self) -> list[Query]:
        q = self.queries
        sync = q.pragma_synchronous_full if self._synchronous_full else q.pragma_synchronous_normal
        return [q.pragma_busy_timeout, q.pragma_foreign_keys, sync]

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            conn.row_factory = _dict_row  # type: ignore[assignment]  # typeshed says type only
            for pragma in self._pragmas():
                await conn.execute(pragma.sql)
        except BaseException:
            await conn.close()
            raise
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._plain_connection()
        try:
            conn.row_factory = _dict_row
            for pragma in self._pragmas():
                conn.execute(pragma.sql)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _on_writer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer_thread, fn, *args)

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        """Apply each pending migration once, the write lock taken before versions are read."""
        q = self.queries
        # In a write transaction: a bare CREATE reads, then writes, and in WAL mode a write
        # after another process's commit fails at once instead of waiting.
        await conn.execute(q.begin_immediate.sql)
        await conn.execute(q.create_migrations_table.sql)
        await conn.commit()
        for migration in load_migrations(self._sql_dir / "migrations"):
            await conn.execute(q.begin_immediate.sql)
            try:
                rows = await conn.execute_fetchall(q.applied_migrations.sql)
                applied = {row["version"] for row in rows}
                if migration.version in applied:
                    await conn.rollback()
                    continue
                for statement in split_statements(migration.sql):
                    await conn.execute(statement)
                await conn.execute(
                    q.record_migration.sql,
                    {"version": migration.version, "name": migration.name, "applied_at": utc_now()},
                )
                await conn.commit()
                log.info("applied migration %s", migration.name)
            except BaseException:
                await conn.rollback()
                raise

    async def read(self, op: Operation[T]) -> T:
        conn = self._readers[self._next_reader]
        self._next_reader = (self._next_reader + 1) % len(self._readers)
        return await op(_SqliteExecutor(conn))

    async def write(self, op: Operation[T], *, durable: bool = True) -> T:
        if self._writer_task is None or self._writer_task.done():
            raise RuntimeError("the database is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(op, future, durable or not self._synchronous_full))
        return await future

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.MAX_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            # Writes that need no fsync commit first, apart, and are answered at once: they
            # never wait for the fsync of the durable writes that follow in the same hop.
            lazy = [pending for pending in batch if not pending.durable]
            durable = [pending for pending in batch if pending.durable]
            try:
                outcomes = await self._on_writer_thread(
                    self._run_split, asyncio.get_running_loop(), lazy, durable
                )
            except Exception as exc:  # the thread itself failed: every caller hears why
                durable, outcomes = batch, [_Outcome(error=exc)] * len(batch)
            _settle(durable, outcomes)

    def _run_split(
        self, loop: asyncio.AbstractEventLoop, lazy: list[_Pending], durable: list[_Pending]
    ) -> list[_Outcome]:
        """On the write thread: ``lazy`` committed and answered, then ``durable``'s outcomes."""
        if lazy:
            done = self._run_batch([pending.op for pending in lazy], full=False)
            loop.call_soon_threadsafe(_settle, lazy, done)
        return self._run_batch([pending.op for pending in durable]) if durable else []

    def _run_batch(self, ops: list[Operation[Any]], full: bool = True) -> list[_Outcome]:
        """On the write thread: the batch in one transaction, or each alone if one fails."""
        conn = self._writer
        assert conn is not None
        executor = _ThreadExecutor(conn)
        full = full and self._synchronous_full
        try:
            if full != self._writer_full:
                # NORMAL in WAL mode: the commit skips its fsync; the next FULL commit's fsync
                # of the WAL covers it, and checkpoints still sync (no committed write is lost).
                q = self.queries
                pragma = q.pragma_synchronous_full if full else q.pragma_synchronous_normal
                conn.execute(pragma.sql)
                self._writer_full = full
            conn.execute(self.queries.begin_immediate.sql)
            try:
                results: list[Any] = [_run_to_end(op(executor)) for op in ops]
                with _storage_errors():
                    conn.commit()
            except BaseException:
                conn.rollback()
                raise
        except Exception as exc:
            if len(ops) == 1:
                return [_Outcome(error=exc)]
            # One failed, so none committed: each alone, so the failure reaches only its caller.
            return [self._run_batch([op], full)[0] for op in ops]
        return [_Outcome(value=result) for result in results]

    async def integrity_check(self) -> list[str]:
        rows = await self.read(lambda x: x.all(self.queries.integrity_check))
        return [str(next(iter(row.values()))) for row in rows]

    async def close(self) -> None:
        if self._writer_task is not None:
            # Queued writes finish first: their callers are waiting for an answer.
            self._queue.put_nowait(None)
            await self._writer_task
            self._writer_task = None
        for conn in self._readers:
            await conn.close()
        self._readers.clear()
        if self._writer is not None:
            await self._on_writer_thread(self._writer.close)
            self._writer = None
        self._writer_thread.shutdown(wait=False)
