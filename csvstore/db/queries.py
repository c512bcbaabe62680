"""Named SQL queries loaded from ``sql/``, in aiosql's format (``-- name: x`` starts one;
``x^`` returns at most one row; ``:name`` parameters)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Inside an installed wheel, sql/ ships as csvstore/sql/ (setup.py); in a source checkout
# or an editable install it is the repository's top-level folder.
_PACKAGED_SQL = Path(__file__).resolve().parents[1] / "sql"
SQL_DIR = _PACKAGED_SQL if _PACKAGED_SQL.is_dir() else Path(__file__).resolve().parents[2] / "sql"

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<one>\^?)\s*$")


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    sql: str
    returns_one: bool


def parse_queries(text: str, *, source: str = "<sql>") -> dict[str, Query]:
    """Split one ``.sql`` file into its named queries."""
    queries: dict[str, Query] = {}
    name: str | None = None
    one = False
    body: list[str] = []

    def flush() -> None:
        if name is None:
            return
        sql = "\n".join(line for line in body if not line.lstrip().startswith("--")).strip()
        if not sql:
            raise ValueError(f"{source}: query {name!r} has no SQL")
        if name in queries:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        queries[name] = Query(name=name, sql=sql.rstrip(";"), returns_one=one)

    for line in text.splitlines():
        match = _NAME_LINE.match(line.strip())
        if match:
            flush()
            name, one, body = match["name"], bool(match["one"]), []
        elif name is not None:
            body.append(line)
    flush()
    return queries


# ``sql/<dialect>.sql`` is loaded for that dialect only.
DIALECTS = ("sqlite", "postgres")


class Queries:
    """The named queries of one dialect, as attributes: the shared ``sql/*.sql``, then the
    dialect's overlay ``sql/<dialect>/*.sql``, whose queries replace shared ones."""

    def __init__(self, sql_dir: Path = SQL_DIR, *, dialect: str = "sqlite") -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown SQL dialect {dialect!r}; known: {', '.join(DIALECTS)}")
        self.dialect = dialect
        others = {f"{other}.sql" for other in DIALECTS if other != dialect}
        self._by_name: dict[str, Query] = {}
        shared = [path for path in sorted(sql_dir.glob("*.sql")) if path.name not in others]
        self._load(shared, replace=False)
        self._load(sorted((sql_dir / dialect).glob("*.sql")), replace=True)

    def _load(self, paths: list[Path], *, replace: bool) -> None:
        """``replace``: a query may replace one loaded before (an overlay over the shared
        set); within one layer a name is still defined once."""
        before = set(self._by_name)
        for path in paths:
            for query in parse_queries(path.read_text(), source=path.name).values():
                if query.name in self._by_name and not (replace and query.name in before):
                    raise ValueError(f"{path.name}: query {query.name!r} is defined twice")
                before.discard(query.name)
                self._by_name[query.name] = query

    def __iter__(self) -> Iterator[Query]:
        """Every query, by name (a method name could hide a query of the same name)."""
        return iter([self._by_name[name] for name in sorted(self._by_name)])

    def __getattr__(self, name: str) -> Query:
        try:
            return self._by_name[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in sql/ ({self.dialect})") from None


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path) -> list[Migration]:
    """``NNNN_description.sql`` files in version order; gaps and duplicates are errors."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        prefix = path.name.split("_", 1)[0]
        if not prefix.isdigit():
            raise ValueError(f"migration {path.name} does not start with a version number")
        migrations.append(Migration(int(prefix), path.name, path.read_text()))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(f"migration {migration.name}: expected version {expected}")
    return migrations
