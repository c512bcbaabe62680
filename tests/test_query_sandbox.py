"""Issue 20, item 5: every escape of the query sandbox, tried against the engine itself (the
SQL check) and against the locked DuckDB under it (each setting verified on its own, with the
check bypassed). Each refusal names what was refused; nothing outside the session's files is
read or written."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from csvstore.errors import QueryInvalid, QueryRefused
from csvstore.query.engine import Dialect, QueryEngine, QueryLimits, TableSource
from csvstore.query.sandbox import Sandbox

SECRET = "csvstore-canary-7d41"
LIMITS = QueryLimits(timeout_s=5, memory_bytes=64 << 20, max_rows=1000, concurrency=2)


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """A session's file, another session's file and a secret outside both."""
    ours, theirs = tmp_path / "sessions" / "a", tmp_path / "sessions" / "b"
    ours.mkdir(parents=True)
    theirs.mkdir(parents=True)
    (ours / "f1.csv").write_text("city,people\nParis,2100000\nLyon,520000\n")
    (theirs / "f2.csv").write_text(f"secret\n{SECRET}\n")
    (tmp_path / "secret.txt").write_text(f"{SECRET}\n")
    return {
        "ours": ours / "f1.csv",
        "theirs": theirs / "f2.csv",
        "secret": tmp_path / "secret.txt",
        "root": tmp_path,
    }


def _sources(world: dict[str, Path]) -> list[TableSource]:
    return [TableSource("f1", "cities.csv", "2026-01-01", str(world["ours"]), Dialect())]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _escapes(world: dict[str, Path]) -> list[tuple[str, str]]:
    """(SQL, the words the refusal must contain): item 5's list, one by one."""
    secret, theirs, root = world["secret"], world["theirs"], world["root"]
    out = root / "out.csv"
    return [
        # No other file is reachable.
        (f"SELECT * FROM read_csv('{secret}')", "read_csv()"),
        (f"SELECT * FROM '{secret}'", str(secret)),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv()"),
        ("SELECT * FROM read_text('/etc/passwd')", "read_text()"),
        ("SELECT * FROM read_blob('/etc/passwd')", "read_blob()"),
        (f"SELECT * FROM glob('{root}/*')", "glob()"),
        (f"SELECT * FROM read_csv('{theirs}')", "read_csv()"),
        (f"SELECT * FROM '{theirs}'", str(theirs)),
        (f"SELECT * FROM cities_csv, read_csv_auto('{theirs}')", "read_csv_auto()"),
        (f"SELECT * FROM sniff_csv('{theirs}')", "sniff_csv()"),
        (f"SELECT (SELECT max(x) FROM read_csv('{theirs}') t(x))", "read_csv()"),
        (f"WITH x AS (SELECT * FROM '{theirs}') SELECT * FROM x", str(theirs)),
        # No writing.
        (f"COPY cities_csv TO '{out}'", "COPY ... TO"),
        (f"COPY (SELECT 1) TO '{out}' (FORMAT csv)", "COPY ... TO"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("CREATE VIEW v AS SELECT 1", "CREATE"),
        ("CREATE MACRO m() AS 1", "CREATE"),
        ("INSERT INTO cities_csv VALUES ('x', 1)", "INSERT"),
        ("UPDATE cities_csv SET people = 0", "UPDATE"),
        ("DELETE FROM cities_csv", "DELETE"),
        ("WITH x AS (SELECT 1) INSERT INTO cities_csv SELECT 'x', 1 FROM x", "INSERT is"),
        (f"/* read-only? */ COPY cities_csv TO '{out}'", "COPY ... TO"),
        ("DROP VIEW cities_csv", "DROP"),
        (f"ATTACH '{root / 'x.duckdb'}' AS x", "ATTACH"),
        (f"EXPORT DATABASE '{root / 'export'}'", "EXPORT DATABASE"),
        # No extensions.
        ("INSTALL httpfs", "INSTALL"),
        ("LOAD httpfs", "LOAD"),
        ("FORCE INSTALL httpfs", "FORCE"),
        ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "read_parquet()"),
        # No settings.
        ("SET enable_external_access = true", "SET"),
        ("SET memory_limit = '10GB'", "SET"),
        ("RESET threads", "RESET"),
        ("PRAGMA enable_profiling", "PRAGMA"),
        ("PRAGMA version", "PRAGMA"),
        ("CALL pragma_version()", "CALL"),
        # No environment or secrets.
        ("SELECT getenv('HOME')", "getenv()"),
        ("SELECT current_setting('allowed_paths')", "current_setting()"),
        ("SELECT * FROM duckdb_settings()", "duckdb_settings()"),
        ("SELECT * FROM duckdb_databases()", "duckdb_databases()"),
        ("SELECT * FROM duckdb_views()", "duckdb_views()"),
        ("SELECT * FROM duckdb_secrets()", "duckdb_secrets()"),
        ("SELECT * FROM which_secret('s3://x', 's3')", "which_secret()"),
        ("SELECT * FROM information_schema.views", "information_schema.views"),
        ("SELECT * FROM sqlite_master", "sqlite_master"),
        ("SELECT * FROM pg_catalog.pg_views", "pg_catalog.pg_views"),
        ("SELECT * FROM main.cities_csv", "main.cities_csv"),
        ("WITH sqlite_master AS (SELECT 1) SELECT * FROM sqlite_master", "sqlite_master"),
        ("SELECT * FROM (WITH duckdb_views AS (SELECT 1) SELECT 1), duckdb_views", "duckdb_"),
        # SQL text run from inside a query would pass no check.
        ("SELECT * FROM query('SELECT * FROM duckdb_settings()')", "query()"),
        ("SELECT * FROM query_table('cities_csv')", "query_table()"),
        ("SELECT json_execute_serialized_sql('x')", "json_execute_serialized_sql()"),
        ("EXPLAIN SELECT 1", "EXPLAIN"),
        ("SHOW TABLES", "SHOW"),
        ("SHOW ALL TABLES", "SHOW"),
        ("PIVOT cities_csv ON city USING sum(people)", "PIVOT"),
        ("SELECT * FROM (PIVOT cities_csv ON city USING sum(people))", "PIVOT"),
        ("BEGIN TRANSACTION", "BEGIN"),
        ("USE memory", "USE"),
        ("CHECKPOINT", "CHECKPOINT"),
        # One statement only.
        ("SELECT 1; SELECT 2", "2 statements"),
        ("SELECT * FROM cities_csv; COPY cities_csv TO '/tmp/x.csv'", "2 statements"),
    ]


async def test_every_escape_is_refused_by_name_and_nothing_leaks(
    world: dict[str, Path],
) -> None:
    engine = QueryEngine(LIMITS)
    before = _files(world["root"])
    try:
        for sql, named in _escapes(world):
            with pytest.raises(QueryRefused) as caught:
                await engine.run(_sources(world), sql, 10)
            assert caught.value.status == 400, sql
            assert caught.value.reason == "query-refused"
            assert named in caught.value.detail, (sql, caught.value.detail)
            assert SECRET not in caught.value.detail
            with pytest.raises(QueryRefused):
                [chunk async for chunk in engine.stream_csv(_sources(world), sql)]
        # The engine still answers, and it read and wrote nothing anywhere.
        result = await engine.run(_sources(world), "SELECT sum(people) FROM cities_csv", 10)
        assert result.rows == [[2620000]]
    finally:
        await engine.close()
    assert _files(world["root"]) == before


async def test_what_a_query_may_do_is_not_refused(world: dict[str, Path]) -> None:
    # A guard for the checks above: they must not refuse ordinary analysis SQL.
    engine = QueryEngine(LIMITS)
    ok = [
        "FROM cities_csv",
        "SELECT city, people / 1000 AS k FROM cities_csv WHERE city LIKE 'P%' ORDER BY 2",
        "WITH big AS (SELECT * FROM cities_csv WHERE people > 1e6) SELECT count(*) FROM big",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
        "SELECT sum(i) FROM n",
        "SELECT city, rank() OVER (ORDER BY people DESC) FROM cities_csv",
        "SELECT * FROM range(3) r, unnest([1, 2]) u",
        "SELECT strftime(DATE '2024-01-02', '%Y'), extract(year FROM DATE '2024-01-02')",
        "SELECT * FROM (PIVOT cities_csv ON city IN ('Paris', 'Lyon') USING sum(people))",
        "DESCRIBE cities_csv",
        "SUMMARIZE cities_csv",
        "SELECT list(city ORDER BY city), {'a': 1}.a, [x * 2 FOR x IN [1, 2]] FROM cities_csv",
        "VALUES (1, 'a'), (2, 'b')",
    ]
    try:
        for sql in ok:
            result = await engine.run(_sources(world), sql, 10)
            assert result.row_count >= 1, sql
    finally:
        await engine.close()


async def test_errors_in_the_sql_are_invalid_not_refused_and_hide_the_path(
    world: dict[str, Path],
) -> None:
    engine = QueryEngine(LIMITS)
    try:
        with pytest.raises(QueryInvalid) as caught:
            await engine.run(_sources(world), "SELEC 1", 10)
        assert "syntax error" in caught.value.detail
        with pytest.raises(QueryInvalid) as caught:
            await engine.run(_sources(world), "SELECT nope FROM cities_csv", 10)
        assert '"nope"' in caught.value.detail
        with pytest.raises(QueryInvalid) as caught:
            await engine.run(_sources(world), "SELECT CAST(city AS INTEGER) FROM cities_csv", 10)
        assert str(world["root"]) not in caught.value.detail
        with pytest.raises(QueryInvalid):
            await engine.run(_sources(world), "  ", 10)
    finally:
        await engine.close()


# The layer under the check: DuckDB's own settings, each verified with the check bypassed.


def _sandbox(world: dict[str, Path]) -> Sandbox:
    return Sandbox([str(world["ours"])], 64 << 20, 1)


def test_the_locked_settings_are_what_the_sandbox_says(world: dict[str, Path]) -> None:
    box = _sandbox(world)
    try:
        settings = dict(
            box.con.execute(
                "SELECT name, value FROM duckdb_settings() WHERE name IN ("
                "'enable_external_access', 'lock_configuration', 'allowed_paths',"
                "'allowed_directories', 'autoload_known_extensions',"
                "'autoinstall_known_extensions', 'temp_directory', 'memory_limit', 'threads')"
            ).fetchall()
        )
        assert settings["enable_external_access"] == "false"
        assert settings["lock_configuration"] == "true"
        assert settings["autoload_known_extensions"] == "false"
        assert settings["autoinstall_known_extensions"] == "false"
        assert settings["allowed_paths"] == f"[{world['ours']}]"
        # By default DuckDB allows its temp folder (./.tmp of the working directory).
        assert settings["allowed_directories"] == "[]"
        assert settings["temp_directory"] == ""
        assert settings["memory_limit"] == "64.0 MiB"
        assert settings["threads"] == "1"
    finally:
        box.close()


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        # enable_external_access = false with allowed_paths: only the session's own file.
        ("SELECT * FROM read_csv('{secret}')", duckdb.PermissionException),
        ("SELECT * FROM read_text('{secret}')", duckdb.PermissionException),
        ("SELECT * FROM read_csv('{theirs}')", duckdb.PermissionException),
        ("SELECT * FROM '{theirs}'", duckdb.PermissionException),
        ("SELECT * FROM glob('{root}/*')", duckdb.PermissionException),
        ("SELECT * FROM read_text('.tmp/x')", duckdb.PermissionException),
        ("COPY (SELECT 1) TO '{root}/out.csv'", duckdb.PermissionException),
        ("ATTACH '{root}/x.duckdb'", duckdb.PermissionException),
        ("EXPORT DATABASE '{root}/export'", duckdb.PermissionException),
        # lock_configuration: no setting changes, least of all the sandbox's own.
        ("SET enable_external_access = true", duckdb.InvalidInputException),
        ("SET allowed_paths = ['/']", duckdb.InvalidInputException),
        ("SET memory_limit = '10GB'", duckdb.InvalidInputException),
        ("SET autoload_known_extensions = true", duckdb.InvalidInputException),
        ("RESET lock_configuration", duckdb.InvalidInputException),
        # Extensions: no install (no file access), no load of one.
        ("INSTALL httpfs", duckdb.PermissionException),
        ("LOAD httpfs", duckdb.PermissionException),
        ("SELECT * FROM read_csv('https://example.com/x.csv')", duckdb.Error),
        ("SELECT * FROM 's3://bucket/x.csv'", duckdb.Error),
        # getenv exists only in the CLI's build.
        ("SELECT getenv('HOME')", duckdb.CatalogException),
    ],
)
def test_each_duckdb_setting_stops_its_escape_without_the_check(
    world: dict[str, Path], sql: str, error: type[Exception]
) -> None:
    box = _sandbox(world)
    cwd = os.getcwd()
    os.chdir(world["root"])  # a relative .tmp/ would be under the test's folder
    try:
        before = _files(world["root"])
        with pytest.raises(error) as caught:
            box.con.execute(sql.format(**{k: str(v) for k, v in world.items()})).fetchall()
        assert SECRET not in str(caught.value)
        assert _files(world["root"]) == before
        # The session's own file stays readable: the refusals are not a broken database.
        assert box.con.execute(f"SELECT count(*) FROM '{world['ours']}'").fetchall() == [(2,)]
    finally:
        os.chdir(cwd)
        box.close()
