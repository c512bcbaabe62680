"""The database on PostgreSQL, through asyncpg, with the interface of db/sqlite.py. Each
write is a READ COMMITTED transaction on a pooled connection; the server orders writers,
so instances can share it (the session row's lock orders uploads against session deletes:
sql/postgres/files.sql). Deadlocks and serialization failures are retried."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import asyncpg.exceptions
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from csvstore.db.queries import SQL_DIR, Queries, Query, load_migrations
from csvstore.db.sqlite import Operation, Row
from csvstore.errors import DependencyUnavailable, InsufficientStorage
from csvstore.timeutil import utc_now

log = logging.getLogger("csvstore.db")

T = TypeVar("T")

# Text that may contain ":word" without it being a parameter, and the parameters themselves.
_PARAM_OR_SKIPPED = re.compile(
    r"""
      (?P<skip>
          [eE]'(?:[^'\\]|\\.|'')*'                       # E'escape string'
        | '(?:[^']|'')*'                                 # 'string'
        | "(?:[^"]|"")*"                                 # "quoted identifier"
        | \$\$.*?\$\$                                    # $$dollar-quoted$$
        | \$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)\$.*?\$(?P=tag)\$  # $tag$dollar-quoted$tag$
        | --[^\n]*                                       # line comment
        | /\*.*?\*/                                      # block comment
        | ::                                             # a cast, not a parameter
      )
    | :(?P<name>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE | re.DOTALL,
)


def to_positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """``a = :x AND b = :y OR c = :x`` -> (``... $1 ... $2 ... $1``, ("x", "y")), leaving
    strings, quoted identifiers, comments and ``::casts`` alone."""
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name is None:
            return match[0]
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAM_OR_SKIPPED.sub(replace, sql), tuple(names)


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """A full disk on the database server is the client's 507, as on SQLite."""
    try:
        yield
    except asyncpg.exceptions.DiskFullError as exc:
        raise InsufficientStorage(
            "the database server's disk is full: the change could not be recorded"
        ) from exc


# The server is out of reach, restarting, or cut the connection: a 503, not a 500.
_UNREACHABLE = (
    OSError,  # refused, reset, unreachable, while connecting or on a pooled connection
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08, and a closed connection
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01: terminated by a fast shutdown
    asyncpg.exceptions.CrashShutdownError,  # 57P02
)


def _connection_broken(exc: BaseException) -> bool:
    """asyncpg's own errors for a connection the server cut mid-operation."""
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True
    return isinstance(exc, asyncpg.exceptions.InterfaceError) and "connection is closed" in str(exc)


@contextlib.asynccontextmanager
async def _reachable() -> AsyncIterator[None]:
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, _UNREACHABLE) and not _connection_broken(exc):
            raise
        raise DependencyUnavailable(
            "database", "the database (PostgreSQL) is unavailable: the request was not completed"
        ) from exc


class _PostgresExecutor:
    __slots__ = ("_compiled", "_conn")

    def __init__(
        self, conn: PoolConnectionProxy[Record], compiled: dict[str, tuple[str, tuple[str, ...]]]
    ) -> None:
        self._conn = conn
        self._compiled = compiled

    async def all(self, query: Query, params: Mapping[str, Any] | None = None) -> list[Row]:
        compiled = self._compiled.get(query.sql)
        if compiled is None:
            compiled = self._compiled[query.sql] = to_positional(query.sql)
        sql, names = compiled
        params = params or {}
        try:
            args = [params[name] for name in names]
        except KeyError as exc:
            raise KeyError(f"query {query.name!r} needs the parameter {exc.args[0]!r}") from None
        with _storage_errors():
            records = await self._conn.fetch(sql, *args)
        return [dict(record) for record in records]

    async def one(self, query: Query, params: Mapping[str, Any] | None = None) -> Row | None:
        rows = await self.all(query, params)
        return rows[0] if rows else None


# Two transactions collided and one was rolled back: running it again is safe.
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


class PostgresDatabase:
    """A pool of asyncpg connections to one PostgreSQL database."""

    # Few enough that several instances fit in PostgreSQL's default max_connections of 100.
    POOL_SIZE = 10
    MAX_ATTEMPTS = 5

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = POOL_SIZE,
        synchronous_commit: bool = True,
        sql_dir: Path = SQL_DIR,
    ) -> None:
        """``synchronous_commit=False``: a commit a crash of the server (only) can lose."""
        self.url = url
        self._server_settings = {"application_name": "csvstore"}
        if not synchronous_commit:
            self._server_settings["synchronous_commit"] = "off"
        self.queries = Queries(sql_dir, dialect="postgres")
        self._migrations_dir = sql_dir / "postgres" / "migrations"
        self._pool_size = pool_size
        self._pool: asyncpg.Pool[Record] | None = None
        self._compiled: dict[str, tuple[str, tuple[str, ...]]] = {}

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            server_settings=self._server_settings,
        )
        try:
            await self._migrate()
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise

    def _executor(self, conn: PoolConnectionProxy[Record]) -> _PostgresExecutor:
        return _PostgresExecutor(conn, self._compiled)

    async def _migrate(self) -> None:
        """Apply each pending migration once, under an advisory lock, in its own transaction."""
        q = self.queries
        async with self._acquire() as conn:
            x = self._executor(conn)
            await x.all(q.migration_lock)
            try:
                await x.all(q.create_migrations_table)
                applied = {row["version"] for row in await x.all(q.applied_migrations)}
                for migration in load_migrations(self._migrations_dir):
                    if migration.version in applied:
                        continue
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await x.all(
                            q.record_migration,
                            {
                                "version": migration.version,
                                "name": migration.name,
                                "applied_at": utc_now(),
                            },
                        )
                    log.info("applied migration %s", migration.name)
            finally:
                await x.all(q.migration_unlock)

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[PoolConnectionProxy[Record]]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the database is not open")
        conn = await pool.acquire()
        try:
            yield conn
        finally:
            try:
                await pool.release(conn)
            except Exception as exc:
                # The reset of a connection cut after the work was done: the outcome
                # (a write's COMMIT) stands.
                log.info("a broken connection was dropped from the pool: %r", exc)

    async def read(self, op: Operation[T]) -> T:
        async with _reachable(), self._acquire() as conn:
            return await op(self._executor(conn))

    async def write(self, op: Operation[T], *, durable: bool = True) -> T:
        # Always durable: the server can crash and lose an unflushed intent while its
        # owner lives on and publishes (docs/design/intents.md).
        del durable
        for attempt in range(1, self.MAX_ATTEMPTS + 1):
            try:
                async with _reachable(), self._acquire() as conn:
                    with _storage_errors():
                        async with conn.transaction(isolation="read_committed"):
                            return await op(self._executor(conn))
            except _RETRYABLE as exc:
                if attempt == self.MAX_ATTEMPTS:
                    raise
                log.info("write attempt %d rolled back (%s); retrying", attempt, exc.sqlstate)
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    async def integrity_check(self) -> list[str]:
        rows = await self.read(lambda x: x.all(self.queries.integrity_check))
        return [str(row["problem"]) for row in rows] or ["ok"]

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
