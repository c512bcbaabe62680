"""The query engine: DuckDB over a session's stored CSV files, sandboxed, in worker threads.
No HTTP, database or storage here; docs/design/query.md says how the sandbox works."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from csvstore.model import StoredFile

# What a result value becomes in JSON: dates and times as ISO 8601 strings, decimals as numbers.
JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None


@dataclass(frozen=True)
class QueryLimits:
    timeout_s: float  # --query-timeout: DuckDB time per query, then interrupt
    memory_bytes: int  # --query-memory: DuckDB's memory_limit of the query's database
    max_rows: int  # --query-max-rows: rows of a CSV result, and the most a JSON limit may ask
    concurrency: int  # --query-concurrency: queries at once; more are refused (QueryBusy)
    threads: int = 1  # DuckDB threads per query


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

    @classmethod
    def of(cls, stored: StoredFile) -> Dialect:
        return cls(
            delimiter=stored.delimiter or ",",
            quotechar=stored.quotechar,
            header=stored.has_header if stored.has_header is not None else True,
            skip=stored.preamble_lines or 0,
            encoding=stored.encoding or "utf-8",
            comment=stored.comment_char,
            footer_lines=stored.footer_lines or 0,
            row_count=stored.row_count,
            ragged=bool(stored.ragged_rows),
        )


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


def table_names(sources: Sequence[TableSource]) -> list[str]:
    """Item 1's rule, in the order of ``sources``; clashes get _2, _3 in upload order."""
    raise NotImplementedError


class QueryEngine:
    """Errors: csvstore.errors' QueryRefused, QueryInvalid, QueryTimeout, QueryTooLarge,
    QueryBusy (and QueryUnsupportedFile for a file DuckDB cannot decode)."""

    def __init__(self, limits: QueryLimits) -> None:
        self.limits = limits

    async def tables(self, sources: Sequence[TableSource]) -> list[TableInfo]:
        raise NotImplementedError

    async def run(self, sources: Sequence[TableSource], sql: str, limit: int) -> QueryResult:
        raise NotImplementedError

    def stream_csv(self, sources: Sequence[TableSource], sql: str) -> AsyncIterator[bytes]:
        """The result as CSV (header line first), at most max_rows rows. Every refusal and
        error is raised by the first ``__anext__``, before any byte: call it before sending
        the response's headers."""
        raise NotImplementedError

    async def summarize(self, source: TableSource) -> list[ColumnSummary]:
        raise NotImplementedError

    async def close(self) -> None:
        """Interrupts the running queries and stops the worker threads."""
