"""One DuckDB database per query, locked down, and the check every SQL text passes before it
runs (docs/design/query.md lists each escape and what stops it)."""

from __future__ import annotations

import codecs
import csv
import functools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from csvstore.errors import QueryInvalid, QueryRefused, QueryUnsupportedFile

if TYPE_CHECKING:
    import duckdb

# Table functions that compute rows from values and touch no file or catalog.
TABLE_FUNCTIONS = frozenset(
    {"range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree"}
)
# Functions that read settings, variables, secrets or the catalog, or run SQL text.
DENIED_FUNCTIONS = frozenset(
    {
        "current_setting", "getvariable", "json_execute_serialized_sql", "json_deserialize_sql",
        "which_secret", "copy_database", "import_database", "database_list", "database_size",
        "show_databases", "extension_versions", "enable_profile", "disable_profile",
        "current_schemas", "in_search_path", "query", "query_table", "getenv",
    }
)  # fmt: skip
DENIED_PREFIXES = ("duckdb_", "pragma_", "read_", "parquet_", "sniff_", "glob")
# DuckDB decodes these without its "encodings" extension, which cannot be installed here.
# Not UTF-16: DuckDB's reads little-endian whatever the BOM says, so a big-endian file came
# out as one garbled column and no rows; UTF-16 files take the UTF-8 copy like cp1252's.
ENCODINGS = {
    "utf-8": "utf-8", "utf-8-sig": "utf-8", "ascii": "utf-8", "latin-1": "latin-1",
    "iso8859-1": "latin-1",
}  # fmt: skip
# The first words of statements, for refusals that name what was refused.
_KEYWORD = re.compile(r"(\w+)")
_COMMENTS = re.compile(r"/\*.*?\*/|--[^\n]*", re.DOTALL)


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def open_database(memory_bytes: int, threads: int) -> duckdb.DuckDBPyConnection:
    """A database not yet locked: a Sandbox locks it to its paths."""
    config: dict[str, Any] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "python_enable_replacements": False,
        "temp_directory": "",
        "memory_limit": f"{max(memory_bytes // 1024, 1024)}KiB",
        "threads": threads,
    }
    import duckdb  # here: importing it costs every process ~14 MiB, queries or not

    return duckdb.connect(":memory:", config=config)


class Sandbox:
    """An in-memory DuckDB that may read only ``paths``: no other file, no extension, no
    setting change, no spill to disk (a query over its memory limit fails instead)."""

    def __init__(
        self,
        paths: Iterable[str],
        memory_bytes: int,
        threads: int,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        self.con = con or open_database(memory_bytes, threads)
        self.views: dict[str, tuple[str, Any]] = {}
        try:
            allowed = ", ".join(quote_literal(p) for p in sorted(set(paths)))
            # allowed_paths can only be set once the database runs; then the lock.
            self.con.execute(f"SET allowed_paths = [{allowed}]")
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute("SET enable_progress_bar = false")  # printed on stderr
            self.con.execute("SET enable_external_access = false")
            self.con.execute("SET lock_configuration = true")
        except BaseException:
            self.con.close()
            raise

    def interrupt(self) -> None:
        self.con.interrupt()

    def close(self) -> None:
        self.con.close()

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        return list(self.con.fetchmany(n))

    def columns(self, name: str) -> list[tuple[str, str]]:
        rows = self.con.execute(f"DESCRIBE {quote_name(name)}").fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def define(self, name: str, path: str, dialect: Any) -> None:
        import duckdb

        if self.views.get(name) == (path, dialect):
            return
        view = f"CREATE OR REPLACE VIEW {quote_name(name)} AS "
        try:
            sql = read_csv_sql(path, dialect)
        except FileNotFoundError:  # its stored file is gone: this table only, not the session
            raise QueryUnsupportedFile(
                f"table {name} cannot be read: its stored file is missing"
            ) from None
        except OSError as exc:
            raise _unreadable(name, path, exc) from None
        try:
            self.con.execute(view + sql)
        except (duckdb.InterruptException, duckdb.OutOfMemoryException):
            raise  # the query's time or memory: the job answers for those
        except duckdb.Error as exc:
            # DuckDB's sniffer gives up on some ragged files (a preamble to skip and rows of
            # other widths): read as text columns, with the dialect csvstore recorded.
            if not dialect.ragged:
                raise _unreadable(name, path, exc) from None
            try:
                columns = text_columns(path, dialect)
                self.con.execute(view + read_csv_sql(path, dialect, columns=columns))
            except (duckdb.Error, OSError, csv.Error):
                raise _unreadable(name, path, exc) from None
        self.views[name] = (path, dialect)

    def statement(self, sql: str, names: Sequence[str]) -> tuple[str, set[str]]:
        """The one SELECT of ``sql`` and the session tables it reads; refuses the rest."""
        import duckdb

        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryInvalid(clean_message(exc)) from None
        if not statements:
            raise QueryInvalid("the query is empty: send one SELECT statement")
        if len(statements) > 1:
            raise QueryRefused(
                f"{len(statements)} statements found: a query is one SELECT statement"
            )
        statement = statements[0]
        if statement.type == duckdb.StatementType.MULTI:
            raise QueryRefused(
                "a statement DuckDB runs as several (PIVOT without an IN list) is not allowed:"
                f" {_ONE}"
            )
        if statement.type != duckdb.StatementType.SELECT:
            kind = statement.type.name
            raise QueryRefused(f"{_refused_keyword(statement.query, kind)} is not allowed: {_ONE}")
        text = statement.query
        row = self.con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()
        tree = json.loads(row[0]) if row else {"error": True}
        if tree.get("error"):
            raise QueryRefused(f"this statement cannot be checked, so it is not run: {_ONE}")
        return text, check_tree(tree["statements"], set(names), reserved_names())


_ONE = "a query is one read-only SELECT statement over the session's tables"


def _refused_keyword(text: str, kind: str) -> str:
    """The statement's own first word where it names it (SET, RESET, INSTALL, LOAD, ...),
    else its type (WITH x AS (...) INSERT ... is an INSERT)."""
    found = _KEYWORD.search(_COMMENTS.sub(" ", text))
    word = found.group(1).upper() if found else kind
    if word in ("WITH", "(") or not word.isalpha():
        word = kind
    if word == "COPY" and re.search(r"\bTO\b", text, re.IGNORECASE):
        return "COPY ... TO"
    return {"EXPORT": "EXPORT DATABASE", "PIVOT": "a PIVOT statement"}.get(word, word)


_SYSTEM_NAMES: frozenset[str] | None = None


def reserved_names() -> frozenset[str]:
    """Names a bare table reference could resolve to besides the session's (the system
    views): no table and no CTE may take one (a CTE would shadow it in its own scope only)."""
    global _SYSTEM_NAMES
    if _SYSTEM_NAMES is None:
        import duckdb

        with duckdb.connect(":memory:") as con:
            rows = con.execute(
                "SELECT view_name FROM duckdb_views() UNION SELECT table_name FROM duckdb_tables()"
            ).fetchall()
        _SYSTEM_NAMES = frozenset(str(r[0]).lower() for r in rows)
    return _SYSTEM_NAMES


def _functions_allowed(name: str) -> bool:
    return name not in DENIED_FUNCTIONS and not name.startswith(DENIED_PREFIXES)


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def check_tree(tree: Any, names: set[str], system: frozenset[str]) -> set[str]:
    """Walks DuckDB's parse tree (json_serialize_sql); returns the session tables read."""
    nodes = list(_nodes(tree))
    ctes: set[str] = set()
    for node in nodes:
        for entry in (node.get("cte_map") or {}).get("map", []):
            cte = str(entry["key"]).lower()
            if cte in system:
                raise QueryRefused(f"a CTE may not be named {cte!r}, a name of DuckDB's catalog")
            ctes.add(cte)
    used: set[str] = set()
    for node in nodes:
        kind = node.get("type")
        if kind == "BASE_TABLE":
            table = str(node.get("table_name", "")).lower()
            qualified = node.get("schema_name") or node.get("catalog_name")
            if qualified or table not in names | ctes:
                shown = ".".join(p for p in node.get("qualified_name", {}).get("path", [table]))
                tables = ", ".join(sorted(names)) or "none"
                raise QueryRefused(
                    f"{shown!r} is not a table of this session (its tables: {tables}): "
                    "a query reads only its session's tables"
                )
            if table in names:
                used.add(table)
        elif kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            fname = str(function.get("function_name", "")).lower()
            if fname not in TABLE_FUNCTIONS:
                raise QueryRefused(
                    f"the table function {fname}() is not allowed: a query reads only its "
                    "session's tables"
                )
        elif kind == "SHOW_REF" and node.get("query") is None:
            raise QueryRefused(f"SHOW is not allowed: {_ONE}")
        elif node.get("class") in ("FUNCTION", "WINDOW", "AGGREGATE"):
            fname = str(node.get("function_name", "")).lower()
            if not _functions_allowed(fname):
                raise QueryRefused(f"the function {fname}() is not allowed in a query")
    return used


def clean_message(exc: BaseException, paths: dict[str, str] | None = None) -> str:
    """DuckDB's message with the engine's file paths replaced by table names."""
    text = str(exc)
    for path, name in (paths or {}).items():
        text = text.replace(path, name)
    return text.strip()


def _unreadable(name: str, path: str, exc: BaseException) -> QueryUnsupportedFile:
    """The file's fault, not the query's (422, not 400), in DuckDB's first line only: the
    lines after it quote the view's statement, with the server's path to the file cut short
    where ``clean_message`` cannot find it."""
    first = clean_message(exc, {path: name}).split("\n")[0]
    return QueryUnsupportedFile(f"table {name} cannot be read by the query engine: {first}")


def read_csv_sql(path: str, dialect: Any, *, columns: Sequence[str] = ()) -> str:
    """``SELECT * FROM read_csv(...)`` with the dialect csvstore recorded; with ``columns``,
    DuckDB's sniffer is off and every column is text."""
    encoding = ENCODINGS.get(_codec(dialect.encoding))
    if encoding is None:
        raise QueryUnsupportedFile(
            f"the file is {dialect.encoding}, which the query engine cannot decode "
            "(it reads UTF-8 and Latin-1)"
        )
    names: Sequence[str] = ()
    header = bool(dialect.header)
    found = _header_line(path, dialect) if header else None
    if found is None:
        skip = _skip(path, dialect)
    else:
        skip = found[0] - 1  # blank lines before the header too: skip counts them
        if dialect.rule and dialect.names:
            # A rule line under the header: both skipped, and the names given.
            names, skip, header = dialect.names, found[0] + 1, False
        elif dialect.names and not columns and found[1] == len(dialect.names) - 1:
            # One name short: the header line skipped too, and the names given.
            names, skip, header = dialect.names, found[0], False
    options = [
        f"delim = {quote_literal(dialect.delimiter)}",
        f"quote = {quote_literal(dialect.quotechar or '')}",
        f"header = {'true' if header else 'false'}",
        f"encoding = {quote_literal(encoding)}",
    ]
    if names and not columns:
        options.append(f"names = [{', '.join(quote_literal(n) for n in names)}]")
    if skip or not dialect.ragged:  # skip = 0 made the sniffer fail on a row past the header
        options.append(f"skip = {skip}")
    if dialect.escapechar:
        options.append(f"escape = {quote_literal(dialect.escapechar)}")
    if dialect.comment:
        options.append(f"comment = {quote_literal(dialect.comment)}")
    if dialect.ragged:
        options.append("null_padding = true")
    elif dialect.footer_lines:
        # Notes after the table are not rows (and a short row must not make a column text):
        # skipped as malformed, and the recorded row count bounds the table.
        options.append("ignore_errors = true")
    if columns:
        struct = ", ".join(f"{quote_literal(c)}: 'VARCHAR'" for c in columns)
        options += ["auto_detect = false", "strict_mode = false", f"columns = {{{struct}}}"]
    limit = ""
    if dialect.footer_lines and dialect.row_count is not None:
        limit = f" LIMIT {int(dialect.row_count)}"
    return f"SELECT * FROM read_csv({quote_literal(path)}, {', '.join(options)}){limit}"


@functools.lru_cache(maxsize=64)
def text_columns(path: str, dialect: Any) -> tuple[str, ...]:
    """The names of a file's columns, as DuckDB would give them: the header's (blank ones
    ``column<i>``, repeats ``<name>_<n>``), then ``column<i>`` up to its widest row. One
    pass over the file (stored files never change, so the answer is kept)."""
    with open(path, encoding=dialect.encoding, errors="replace", newline="") as f:
        for _ in range(int(dialect.skip)):
            f.readline()
        records = csv.reader(f, delimiter=dialect.delimiter, quotechar=dialect.quotechar or None)
        header: list[str] = []
        width = 0
        for record in records:
            if not record or (dialect.comment and record[0].startswith(dialect.comment)):
                continue
            if dialect.header and not header:
                header = record
            width = max(width, len(record))
    if dialect.names:  # a header with an unnamed edge column: the names the profile gave
        header = list(dialect.names)
    return duckdb_names(header + [""] * (width - len(header)))


def duckdb_names(header: Sequence[str]) -> tuple[str, ...]:
    """Column names as DuckDB gives them: a blank one ``column<i>`` (``column00`` past 10
    columns), a repeat (without case) ``<name>_<k>``, again if taken (``a, a_1, a_1_1``)."""
    digits = len(str(max(len(header) - 1, 0)))
    names: list[str] = []
    seen: set[str] = set()
    repeats: dict[str, int] = {}
    for i, raw in enumerate(header):
        name = raw.strip() or f"column{i:0{digits}d}"
        while name.lower() in seen:
            k = repeats[name.lower()] = repeats.get(name.lower(), 0) + 1
            name = f"{name}_{k}"
        seen.add(name.lower())
        names.append(name)
    return tuple(names)


@functools.lru_cache(maxsize=64)
def _header_line(path: str, dialect: Any) -> tuple[int, int] | None:
    """(lines read_csv's ``skip`` passes to be after the header, which counts blank lines
    but not comments; the header's width), or None."""
    comment = dialect.comment
    with open(path, encoding=dialect.encoding, errors="replace", newline="") as f:
        lines = 0
        for number, line in enumerate(f):
            if comment and line.lstrip(" \t").startswith(comment):
                continue
            lines += 1
            if number < int(dialect.skip) or not line.strip("\r\n"):
                continue
            quote = dialect.quotechar or None
            record = next(csv.reader([line], delimiter=dialect.delimiter, quotechar=quote), [])
            return lines, len(record)
    return None


def _skip(path: str, dialect: Any) -> int:
    """read_csv's ``skip`` does not count comment lines: the preamble less those in it."""
    skip = int(dialect.skip)
    if not skip or not dialect.comment:
        return skip
    comments = 0
    with open(path, encoding=dialect.encoding, errors="replace", newline="") as f:
        for _, line in zip(range(skip), f, strict=False):
            comments += line.lstrip(" \t").startswith(dialect.comment)
    return skip - comments


def _codec(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return name
