"""The query engine: DuckDB over a session's stored CSV files, sandboxed, in worker threads.
No HTTP, database or storage here; docs/design/query.md says how the sandbox works."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from csvstore.errors import (
    QueryBusy,
    QueryInvalid,
    QueryRefused,
    QueryTimeout,
    QueryTooLarge,
    QueryUnsupportedFile,
)
from csvstore.model import StoredFile
from csvstore.query.sandbox import (
    Sandbox,
    clean_message,
    duckdb_names,
    open_database,
    quote_name,
    reserved_names,
)
from csvstore.query.summary import summarize
from csvstore.query.values import JsonValue, csv_chunk, json_rows

if TYPE_CHECKING:
    import duckdb

T = TypeVar("T")
CSV_BATCH = 10_000  # rows per fetch of a CSV result
INTERRUPT_EVERY = 0.02  # s, until the interrupted call returns
IDLE = 2  # locked databases kept for the next query on the same files


@dataclass(frozen=True)
class QueryLimits:
    timeout_s: float  # --query-timeout: DuckDB time per query, then interrupt
    memory_bytes: int  # --query-memory: DuckDB's memory_limit of the query's database
    max_rows: int  # --query-max-rows: rows of a CSV result, and the most a JSON limit may ask
    concurrency: int  # --query-concurrency: queries at once; more are refused (QueryBusy)
    threads: int = 1  # DuckDB threads per query
    # A summary is computed once and kept: two scans of the file (~23 s for 1 GiB on 2 cores).
    summary_timeout_s: float | None = None  # None: 10 x timeout_s


@dataclass(frozen=True)
class Dialect:
    """How DuckDB's read_csv reads one file: the profile csvstore recorded for it."""

    delimiter: str = ","
    quotechar: str | None = '"'
    escapechar: str | None = None
    header: bool = True
    skip: int = 0  # preamble lines before the header
    encoding: str = "utf-8"  # a Python codec name, as recorded
    comment: str | None = None
    footer_lines: int = 0
    row_count: int | None = None  # data rows recorded (bounds a table with a footer)
    ragged: bool = False
    no_columns: bool = False  # no table at all: DuckDB's invented `column0` is not shown
    # A header with no name over its first or last column, which may be one field short of
    # its rows (DuckDB would shift every name by one): the names to give it.
    names: tuple[str, ...] = ()
    rule: bool = False

    @classmethod
    def of(cls, stored: StoredFile) -> Dialect:
        return cls(
            delimiter=stored.delimiter or ",",
            quotechar=stored.quotechar,
            escapechar=stored.escape_char,
            header=stored.has_header if stored.has_header is not None else True,
            skip=stored.preamble_lines or 0,
            encoding=stored.encoding or "utf-8",
            comment=stored.comment_char,
            footer_lines=stored.footer_lines or 0,
            row_count=stored.row_count,
            ragged=bool(stored.ragged_rows),
            no_columns=stored.column_count == 0,
            names=_unnamed_edge(stored) or _ruled(stored),
            rule=bool(stored.header_rule and stored.has_header),
        )


def _unnamed_edge(stored: StoredFile) -> tuple[str, ...]:
    columns = stored.columns or []
    if (
        not stored.has_header
        or len(columns) < 2
        or "" not in (columns[0], columns[-1])
        or any("\n" in c or "\r" in c for c in columns)
    ):
        return ()
    return duckdb_names(columns)


def _ruled(stored: StoredFile) -> tuple[str, ...]:
    columns = stored.columns or []
    if not stored.header_rule or any("\n" in c or "\r" in c for c in columns):
        return ()
    return duckdb_names(columns)


@dataclass(frozen=True)
class TableSource:
    """One stored file as the engine needs it; ``path`` is local and the only kind of file
    the sandbox lets a query read."""

    file_id: str
    original_name: str
    uploaded_at: str  # upload order settles name clashes
    path: str
    dialect: Dialect

    @classmethod
    def of(cls, stored: StoredFile, path: str) -> TableSource:
        return cls(stored.id, stored.original_filename, stored.created_at, path, Dialect.of(stored))


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class TableInfo:
    name: str
    file_id: str
    columns: list[Column]
    row_count: int
    error: str | None = None  # DuckDB could not read the file: no columns, no rows


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list[JsonValue]]
    row_count: int  # len(rows)
    truncated: bool  # the result had more rows than returned
    elapsed_ms: float


@dataclass(frozen=True)
class ColumnSummary:
    name: str
    type: str
    count: int  # non-null values
    nulls: int
    approx_distinct: int
    min: JsonValue
    max: JsonValue
    mean: float | None  # numeric columns only
    std: float | None
    top: list[tuple[JsonValue, int]]  # the 5 most frequent values and their counts


# A session's files, or some of them already named (``table_names`` over the whole session).
Sources = Sequence[TableSource] | Mapping[str, TableSource]


def table_names(sources: Sequence[TableSource]) -> list[str]:
    """Item 1's rule, in the order of ``sources``; clashes get _2, _3 in upload order."""
    taken = set(reserved_names())
    names: dict[int, str] = {}
    order = sorted(range(len(sources)), key=lambda i: sources[i].uploaded_at)
    for i in order:
        base = re.sub(r"[^a-z0-9_]", "_", sources[i].original_name.lower()) or "_"
        if base[0].isdigit():
            base = "t_" + base
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names[i] = name
    return [names[i] for i in range(len(sources))]


class _Job:
    """One query's sandbox and its DuckDB time, spent only inside worker threads."""

    def __init__(
        self, engine: QueryEngine, box: Sandbox, paths: dict[str, str], limit: float
    ) -> None:
        self.engine, self.box, self.paths, self.limit = engine, box, paths, limit
        self.used = 0.0
        self.expired = False
        self.reusable = True  # by the next query on the same files

    def _expire(self) -> None:
        # An interrupt that lands while DuckDB is between two steps is lost: repeat it.
        self.expired = True
        self.box.interrupt()
        self._timer = asyncio.get_running_loop().call_later(INTERRUPT_EVERY, self._expire)

    def _timeout(self) -> QueryTimeout:
        return QueryTimeout(
            f"the query ran for more than {self.limit:g} s (--query-timeout) and was stopped"
        )

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        limit = self.limit
        if self.used >= limit:
            raise self._timeout()
        self._timer = loop.call_later(limit - self.used, self._expire)
        started = loop.time()
        future = loop.run_in_executor(self.engine.pool, fn, *args)
        import duckdb  # loaded by the engine's first database (sandbox.open_database)

        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread would run on: stop DuckDB, and free the slot only once it has.
            self.reusable = False
            self.box.interrupt()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(future), timeout=5)
            raise
        except duckdb.InterruptException:
            self.reusable = False
            if not self.expired:
                raise
            raise self._timeout() from None
        except duckdb.OutOfMemoryException:
            self.reusable = False
            raise QueryTooLarge(
                f"the query needs more than {self.engine.limits.memory_bytes} bytes of memory"
                " (--query-memory)"
            ) from None
        except duckdb.PermissionException as exc:
            raise QueryRefused(clean_message(exc, self.paths).split("\n")[0]) from None
        except duckdb.Error as exc:
            raise QueryInvalid(clean_message(exc, self.paths)) from None
        finally:
            self._timer.cancel()
            self.used += loop.time() - started


class QueryEngine:
    """Errors: csvstore.errors' QueryRefused, QueryInvalid, QueryTimeout, QueryTooLarge,
    QueryBusy (and QueryUnsupportedFile for a file DuckDB cannot decode)."""

    def __init__(self, limits: QueryLimits) -> None:
        self.limits = limits
        # Its own threads: a busy engine never delays the default executor's file I/O.
        self.pool = ThreadPoolExecutor(max(1, limits.concurrency), "csvstore-query")
        self._active = 0
        self._jobs: set[_Job] = set()
        self._closed = False
        # Opening a DuckDB takes ~14 ms, most of an empty query: a few wait opened, unlocked.
        self._spares: list[duckdb.DuckDBPyConnection] = []
        self._spares_lock = threading.Lock()
        self._spares_wanted = min(2, max(1, limits.concurrency))
        # The last locked databases, by their files: the next query on them skips the lock.
        self._idle: OrderedDict[tuple[str, ...], Sandbox] = OrderedDict()
        self._opener = ThreadPoolExecutor(1, "csvstore-query-open")
        self._warm = False
        self._parser: Sandbox | None = None
        self._parser_lock = threading.Lock()

    def _warm_up(self) -> None:
        """From the first query on, spares wait opened; before it, DuckDB is not even loaded
        (a server that is never asked costs no memory for it: ~50 MiB per process)."""
        if not self._warm:
            self._warm = True
            self._opener.submit(reserved_names)  # opens a DuckDB once: not on the event loop
            self._opener.submit(self._refill)

    def _refill(self) -> None:
        while not self._closed:
            with self._spares_lock:
                if len(self._spares) >= self._spares_wanted:
                    return
            con = open_database(self.limits.memory_bytes, self.limits.threads)
            with self._spares_lock:
                if self._closed:
                    con.close()
                    return
                self._spares.append(con)

    def _release(self, key: tuple[str, ...], job: _Job) -> None:
        if self._closed:
            job.box.close()
            return
        retired = []
        if job.reusable:
            if key in self._idle:
                retired.append(self._idle.pop(key))
            self._idle[key] = job.box
            while len(self._idle) > IDLE:
                retired.append(self._idle.popitem(last=False)[1])
        else:
            retired.append(job.box)
        # Closed and replaced off the query's path (closing takes ~3 ms, opening ~14 ms).
        for box in retired:
            try:
                self._opener.submit(self._retire, box)
            except RuntimeError:  # shut down by close(), from another thread
                box.close()

    def _background(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # shut down by close()
            self._opener.submit(fn)

    def _retire(self, box: Sandbox) -> None:
        box.close()
        self._refill()

    def _sandbox(self, paths: list[str]) -> Sandbox:
        with self._spares_lock:
            con = self._spares.pop() if self._spares else None
        if con is not None:
            self._background(self._refill)
        return Sandbox(paths, self.limits.memory_bytes, self.limits.threads, con)

    def _check_room(self) -> None:
        if self._closed:
            raise QueryBusy("the query engine is shutting down")
        if self._active >= self.limits.concurrency:
            raise QueryBusy(
                f"{self._active} queries are running, as many as --query-concurrency allows;"
                " retry shortly"
            )

    @contextlib.asynccontextmanager
    async def _job(
        self, named: dict[str, TableSource], limit: float | None = None
    ) -> AsyncIterator[_Job]:
        self._check_room()
        self._active += 1
        self._warm_up()
        try:
            paths = {src.path: name for name, src in named.items()}
            key = tuple(sorted(paths))
            box = self._idle.pop(key, None)
            if box is None:
                loop = asyncio.get_running_loop()
                box = await loop.run_in_executor(self.pool, self._sandbox, list(key))
            job = _Job(self, box, paths, limit or self.limits.timeout_s)
            self._jobs.add(job)
            try:
                yield job
            finally:
                self._jobs.discard(job)
                self._release(key, job)
        finally:
            self._active -= 1

    @staticmethod
    def _named(sources: Sources) -> dict[str, TableSource]:
        if isinstance(sources, Mapping):  # named by the caller (a part of a session)
            return dict(sources)
        return dict(zip(table_names(sources), sources, strict=True))

    async def tables_read(self, sql: str, names: Sequence[str]) -> set[str]:
        """The tables of ``names`` that ``sql`` reads, refusing it as a run would: lets the
        caller copy only those files. Parsed in one path-less sandbox kept for this, off the
        query pool (running queries may hold all of it)."""
        self._check_room()
        return await asyncio.to_thread(self._parse, sql, names)

    def _parse(self, sql: str, names: Sequence[str]) -> set[str]:
        with self._parser_lock:
            if self._parser is None:
                self._parser = Sandbox([], self.limits.memory_bytes, 1)
            return self._parser.statement(sql, names)[1]

    async def tables(self, sources: Sources) -> list[TableInfo]:
        """Each table's columns and rows; one DuckDB cannot read is listed with its error
        (the session's other tables stay usable). A timeout still ends the whole call."""
        named = self._named(sources)
        found = []
        async with self._job(named) as job:
            for name, src in named.items():
                try:
                    found.append(await job.call(_table, job.box, name, src))
                except (QueryInvalid, QueryTooLarge, QueryUnsupportedFile, QueryRefused) as exc:
                    found.append(TableInfo(name, src.file_id, [], 0, str(exc)))
        return found

    async def run(self, sources: Sources, sql: str, limit: int) -> QueryResult:
        """At most ``limit`` rows, and never more than max_rows."""
        started = time.perf_counter()
        limit = max(0, min(limit, self.limits.max_rows))
        named = self._named(sources)
        async with self._job(named) as job:
            columns, types = await job.call(_prepare, job.box, named, sql)
            most = self.limits.memory_bytes // 4
            rows = await job.call(_json_rows, job.box, limit, most)
        truncated = len(rows) > limit
        rows = rows[:limit]
        elapsed = (time.perf_counter() - started) * 1000
        return QueryResult(columns, types, rows, len(rows), truncated, elapsed)

    async def stream_csv(self, sources: Sources, sql: str) -> AsyncIterator[bytes]:
        """The result as CSV (header line first), at most max_rows rows. Every refusal and
        error is raised by the first ``__anext__``, before any byte: call it before sending
        the response's headers."""
        named = self._named(sources)
        left = self.limits.max_rows
        async with self._job(named) as job:
            columns, _ = await job.call(_prepare, job.box, named, sql)
            chunk, n = await job.call(_csv_rows, job.box, min(CSV_BATCH, left), columns)
            yield chunk
            left -= n
            while n and left > 0:
                chunk, n = await job.call(_csv_rows, job.box, min(CSV_BATCH, left), None)
                left -= n
                if n:
                    yield chunk

    async def summarize(self, source: TableSource) -> list[ColumnSummary]:
        named = self._named([source])
        limits = self.limits
        async with self._job(named, limits.summary_timeout_s or 10 * limits.timeout_s) as job:
            return await job.call(summarize, job.box, next(iter(named)), source, ColumnSummary)

    async def close(self) -> None:
        """Interrupts the running queries and stops the worker threads."""
        self._closed = True
        for job in list(self._jobs):
            job.box.interrupt()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._opener.shutdown)
        await loop.run_in_executor(None, self.pool.shutdown)
        with self._spares_lock:
            spares, self._spares = self._spares, []
        for con in spares:
            con.close()
        while self._idle:
            self._idle.popitem()[1].close()
        if self._parser is not None:
            self._parser.close()


def _prepare(box: Sandbox, named: dict[str, TableSource], sql: str) -> tuple[list[str], list[str]]:
    """Checks and starts the query: its column names and types; rows come by ``fetch``."""
    text, used = box.statement(sql, list(named))
    for name in sorted(used):
        box.define(name, named[name].path, named[name].dialect)
    box.con.execute(text)
    description = box.con.description or []
    return [str(d[0]) for d in description], [str(d[1]) for d in description]


# Rows become JSON values or CSV in the worker thread too: 10,000 rows take milliseconds.
_RESULT_BATCH = 256  # rows converted at a time, so a result's size is known as it grows


def _json_rows(box: Sandbox, limit: int, max_bytes: int) -> list[list[JsonValue]]:
    """Up to ``limit + 1`` rows (one more tells a cut result), refused once their JSON is
    past ``max_bytes`` (a quarter of --query-memory): DuckDB's memory limit does not cover
    the rows made Python values, then JSON, then a response, each a copy of the result
    (``SELECT list(i) FROM range(10000000)`` is one row of 79 MB)."""
    rows: list[list[JsonValue]] = []
    size = 0
    while len(rows) <= limit:
        batch = json_rows(box.fetch(min(_RESULT_BATCH, limit + 1 - len(rows))))
        if not batch:
            break
        size += len(orjson.dumps(batch))
        if size > max_bytes:
            raise QueryTooLarge(
                f"the result is over {max_bytes} bytes as JSON (a quarter of --query-memory):"
                " select fewer or smaller values"
            )
        rows += batch
    return rows


def _csv_rows(box: Sandbox, n: int, header: list[str] | None) -> tuple[bytes, int]:
    rows = box.fetch(n)
    return csv_chunk(rows, header), len(rows)


def _table(box: Sandbox, name: str, src: TableSource) -> TableInfo:
    box.define(name, src.path, src.dialect)
    if src.dialect.no_columns:
        return TableInfo(name, src.file_id, [], 0)
    columns = [Column(c, t) for c, t in box.columns(name)]
    row = box.con.execute(f"SELECT count(*) FROM {quote_name(name)}").fetchone()
    return TableInfo(name, src.file_id, columns, int(row[0]) if row else 0)
