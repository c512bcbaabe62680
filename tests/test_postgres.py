"""PostgreSQL as the metadata database: settings, SQL loading, migrations, and the races
that several instances sharing one database must get right.

The API suite itself runs on PostgreSQL through the ``settings`` fixture (``make
test-postgres``). The tests here that need a server skip without CSVSTORE_TEST_DATABASE_URL;
the rest run everywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests

from csvstore.analysis.stream import FileFacts
from csvstore.commandline import settings_from
from csvstore.config import Settings, convert
from csvstore.db.postgres import PostgresDatabase, to_positional
from csvstore.db.queries import SQL_DIR, Queries, Query, load_migrations
from csvstore.db.repo import NewFile, Repo
from csvstore.db.sqlite import Executor, SqliteDatabase
from csvstore.errors import InsufficientStorage
from csvstore.maintenance.reconcile import reconcile
from csvstore.service import CsvStore
from csvstore.storage.local import LocalStorage
from csvstore.web.app import create_app
from csvstore.wiring import open_store
from tests.conftest import (
    Client,
    MakeClient,
    assert_consistent,
    assert_problem,
    create_test_database,
    csv_bytes,
    drop_test_database,
    run_async,
    stored_state,
    upload_form,
)
from tests.pgproxy import CommitCuttingProxy
from tests.serverproc import ServerProcess

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# Settings and SQL loading: no server needed.


def test_database_url_selects_the_backend(tmp_path: Path) -> None:
    default = Settings(data_dir=tmp_path)
    assert not default.uses_postgres
    assert default.database_path == tmp_path / "csvstore.db"
    pg = Settings(data_dir=tmp_path, database_url="postgresql://u@db.example:5433/meta")
    assert pg.uses_postgres
    assert Settings(database_url="postgres://u@h/db").uses_postgres
    assert Settings(database_url="/srv/meta.db").database_path == Path("/srv/meta.db")
    assert Settings(database_url="sqlite:///rel/meta.db").database_path == Path("rel/meta.db")
    assert Settings(database_url="sqlite:////abs/meta.db").database_path == Path("/abs/meta.db")
    for bad in ("mysql://u@h/db", "sqlite://nothing", "sqlite:///"):
        with pytest.raises(ValueError, match="unsupported database URL"):
            convert("database_url", bad)


def test_database_url_from_flag_alias_and_env() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/csvstore"
    assert settings_from(["--database-url", url], {}).database_url == url
    # --database, as the issue spells it: argparse accepts the unambiguous prefix.
    assert settings_from(["--database", url], {}).database_url == url
    assert settings_from([], {"CSVSTORE_DATABASE_URL": url}).database_url == url


async def test_a_sqlite_url_opens_that_file(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "meta.db"
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{path}")
    async with open_store(settings) as store:
        assert isinstance(store.db, SqliteDatabase)
        await store.create_session("s")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT session_id FROM sessions").fetchall() == [("s",)]


def test_named_parameters_become_positional() -> None:
    sql, names = to_positional(
        "SELECT :a, :b::text, ':not_a', \"col:x\", $$:no$$, $t$ :no $t$, E'\\':no', :a -- :no\n"
        "/* :no */ FROM t WHERE x = :c_2"
    )
    assert names == ("a", "b", "c_2")
    assert sql == (
        "SELECT $1, $2::text, ':not_a', \"col:x\", $$:no$$, $t$ :no $t$, E'\\':no', $1 -- :no\n"
        "/* :no */ FROM t WHERE x = $3"
    )


def test_postgres_queries_are_the_shared_ones_with_an_overlay() -> None:
    sqlite, pg = Queries(), Queries(dialect="postgres")
    sqlite_names = {q.name for q in sqlite}
    pg_names = {q.name for q in pg}
    assert "pragma_wal" in sqlite_names - pg_names  # sql/sqlite.sql is SQLite's alone
    assert "migration_lock" in pg_names - sqlite_names
    assert {"insert_session", "list_sessions", "get_file"} <= sqlite_names & pg_names
    assert pg.insert_session.sql == sqlite.insert_session.sql  # shared where they agree
    assert "FOR NO KEY UPDATE" in pg.insert_file.sql
    assert "FOR" not in sqlite.insert_file.sql
    # Every query the service uses exists in both dialects.
    shared = {
        name
        for path in SQL_DIR.glob("*.sql")
        if path.name not in {"sqlite.sql", "postgres.sql"}
        for name in re.findall(r"^-- name: (\w+)", path.read_text(), re.MULTILINE)
    }
    assert shared <= pg_names
    with pytest.raises(ValueError, match="unknown SQL dialect"):
        Queries(dialect="oracle")


def test_postgres_versions_of_file_queries_do_not_drift_from_the_shared_ones() -> None:
    """The overlay copies two shared queries to add a lock: a change to the shared text
    (a new column) must be made to the copy too."""
    shared, pg = Queries(), Queries(dialect="postgres")
    assert pg.insert_file.sql.replace("\nFOR NO KEY UPDATE OF s", "") == shared.insert_file.sql

    def columns(sql: str) -> str:
        return sql.split("SELECT", 1)[1].split("FROM", 1)[0]

    assert columns(pg.find_duplicate.sql) == columns(shared.find_duplicate.sql)


def test_overlay_may_replace_a_shared_query_but_not_define_one_twice(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("-- name: q^\nSELECT 1;\n")
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "b.sql").write_text("-- name: q^\nSELECT 2;\n-- name: r\nSELECT 3;\n")
    assert Queries(tmp_path).q.sql == "SELECT 1"
    assert Queries(tmp_path, dialect="postgres").q.sql == "SELECT 2"
    (tmp_path / "postgres" / "c.sql").write_text("-- name: r\nSELECT 4;\n")
    with pytest.raises(ValueError, match="defined twice"):
        Queries(tmp_path, dialect="postgres")


def test_both_engines_have_the_same_migrations() -> None:
    sqlite = [(m.version, m.name) for m in load_migrations(SQL_DIR / "migrations")]
    pg = [(m.version, m.name) for m in load_migrations(SQL_DIR / "postgres" / "migrations")]
    assert sqlite == pg


def test_the_suite_runs_on_the_backend_it_was_asked_for(settings: Settings) -> None:
    asked = os.environ.get("CSVSTORE_TEST_DATABASE_URL", "")
    assert settings.uses_postgres == bool(asked)


# A database of the test server, opened directly.


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    url = create_test_database(pg_server_url)
    yield url
    drop_test_database(pg_server_url, url)


@pytest.fixture
async def pg_db(pg_url: str) -> AsyncIterator[PostgresDatabase]:
    db = PostgresDatabase(pg_url)
    await db.open()
    yield db
    await db.close()


async def _fetch(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def test_migrations_apply_once_when_instances_start_together(pg_url: str) -> None:
    dbs = [PostgresDatabase(pg_url) for _ in range(3)]
    await asyncio.gather(*(db.open() for db in dbs))
    for db in dbs:
        await db.close()
    again = PostgresDatabase(pg_url)  # a restart applies nothing new
    await again.open()
    await again.close()
    rows = await _fetch(pg_url, "SELECT version, name FROM schema_migrations ORDER BY version")
    expected = load_migrations(SQL_DIR / "postgres" / "migrations")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in expected]


async def test_a_schema_of_its_own_leaves_another_apps_tables_alone(pg_url: str) -> None:
    """docs/scaling.md: csvstore's tables have plain names (sessions, schema_migrations) and
    it takes tables of those names as its own; ``?search_path=`` gives it a schema instead."""
    theirs = "SELECT * FROM public.sessions UNION ALL SELECT name FROM public.schema_migrations"
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "CREATE SCHEMA csvstore; CREATE TABLE public.sessions (name text);"
            "INSERT INTO public.sessions VALUES ('their session');"
            "CREATE TABLE public.schema_migrations (version bigint, name text, applied_at text);"
            "INSERT INTO public.schema_migrations VALUES (1, 'their 1', 'then')"
        )
        db = PostgresDatabase(pg_url + "?search_path=csvstore")
        await db.open()
        await db.close()
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('public', 'csvstore')"
        )
        ours = {t["table_name"] for t in tables if t["table_schema"] == "csvstore"}
        assert {"sessions", "files", "upload_intents", "schema_migrations"} <= ours
        assert {t["table_name"] for t in tables if t["table_schema"] == "public"} == {
            "sessions",
            "schema_migrations",
        }
        assert [r[0] for r in await conn.fetch(theirs)] == ["their session", "their 1"]
        applied = await conn.fetchval("SELECT count(*) FROM csvstore.schema_migrations")
        assert applied == len(load_migrations(SQL_DIR / "postgres" / "migrations"))
    finally:
        await conn.close()


async def test_same_tables_columns_and_indexes_as_sqlite(pg_db: PostgresDatabase) -> None:
    conn = sqlite3.connect(":memory:")
    for migration in load_migrations(SQL_DIR / "migrations"):
        conn.executescript(migration.sql)
    for table in ("sessions", "files"):
        # table_xinfo: generated columns too (files.listing_json is one on SQLite).
        sqlite_columns = [row[1] for row in conn.execute(f"PRAGMA table_xinfo({table})")]
        rows = await _fetch(
            pg_db.url,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = $1 ORDER BY ordinal_position",
            table,
        )
        assert [r["column_name"] for r in rows] == sqlite_columns
    sqlite_indexes = {
        row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    }
    pg_indexes = {
        r["indexname"] for r in await _fetch(pg_db.url, "SELECT indexname FROM pg_indexes")
    }
    named = {name for name in sqlite_indexes if not name.startswith("sqlite_autoindex")}
    assert named <= pg_indexes
    conn.close()


async def test_every_named_query_compiles_against_the_schema(pg_db: PostgresDatabase) -> None:
    """PREPARE parses and plans each query without running it: catches typos in SQL files."""
    conn = await asyncpg.connect(pg_db.url)
    try:
        for query in pg_db.queries:
            await conn.prepare(to_positional(query.sql)[0])
    finally:
        await conn.close()


async def test_integrity_check(pg_db: PostgresDatabase) -> None:
    assert await pg_db.integrity_check() == ["ok"]


async def test_deadlocks_and_serialization_failures_are_retried(pg_db: PostgresDatabase) -> None:
    attempts = 0
    fail = Query(
        "fail",
        "DO $$ BEGIN RAISE EXCEPTION 'collided' USING ERRCODE = '40001'; END $$",
        False,
    )

    async def flaky(x: Executor) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            await x.all(fail)
        return "done"

    assert await pg_db.write(flaky) == "done"
    assert attempts == 3

    async def always(x: Executor) -> None:
        await x.all(fail)

    with pytest.raises(asyncpg.exceptions.SerializationError):
        await pg_db.write(always)


async def test_disk_full_is_insufficient_storage(pg_db: PostgresDatabase) -> None:
    """PostgreSQL's disk-full error (53100) reaches the caller as a 507, as on SQLite."""
    full = Query(
        "full",
        "DO $$ BEGIN RAISE EXCEPTION 'no space' USING ERRCODE = '53100'; END $$",
        False,
    )
    with pytest.raises(InsufficientStorage, match="disk is full"):
        await pg_db.write(lambda x: x.all(full))
    with pytest.raises(InsufficientStorage):
        await pg_db.read(lambda x: x.all(full))


# The races, made to happen: one transaction is held open at the worst moment while the
# other runs into it, then released.


def _new_file(file_id: str, session_id: str, sha256: str | None = None) -> NewFile:
    return NewFile(
        id=file_id,
        session_id=session_id,
        filename=f"{file_id}.csv",
        original_filename="a.csv",
        file_size=2,
        content_type="text/csv",
        file_path=f"{file_id}.csv",
        created_at="2024-01-01T00:00:00.000Z",
        facts=FileFacts(sha256=sha256),
    )


async def _wait_until_blocked(url: str, count: int = 1) -> None:
    """Until ``count`` other connections of the database wait for a lock."""
    for _ in range(500):
        rows = await _fetch(
            url,
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        if rows[0]["n"] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second transaction never waited for the first")


async def _hold(
    db: PostgresDatabase, op: Callable[[Executor], Awaitable[Any]]
) -> tuple[asyncio.Task[Any], asyncio.Event]:
    """Run op in a write transaction kept open (with its locks) until the event is set."""
    done, release = asyncio.Event(), asyncio.Event()

    async def holding(x: Executor) -> Any:
        result = await op(x)
        done.set()
        await release.wait()
        return result

    task = asyncio.create_task(db.write(holding))
    await done.wait()
    return task, release


async def _create_session(db: PostgresDatabase, session_id: str, tmp_path: Path) -> None:
    await CsvStore(db, LocalStorage(tmp_path / "uploads", tmp_path / "tmp")).create_session(
        session_id
    )


async def _second_instance(url: str) -> PostgresDatabase:
    other = PostgresDatabase(url)
    await other.open()
    return other


async def test_upload_committing_during_session_delete_is_deleted_with_it(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """The upload commits while the delete waits: the delete must report its file too,
    or the file's bytes would stay in storage with no row (the orphan)."""
    repo, other = Repo(pg_db.queries), await _second_instance(pg_db.url)
    try:
        await _create_session(pg_db, "s", tmp_path)
        await pg_db.write(lambda x: repo.insert_file(x, _new_file("old", "s")))
        upload, release = await _hold(pg_db, lambda x: repo.insert_file(x, _new_file("new", "s")))
        delete = asyncio.create_task(other.write(lambda x: repo.delete_session(x, "s")))
        await _wait_until_blocked(pg_db.url)
        release.set()
        assert (await upload).id == "new"
        assert sorted(await delete or []) == ["new.csv", "old.csv"]
        assert await pg_db.read(repo.all_file_paths) == set()
    finally:
        await other.close()


async def test_upload_into_a_session_being_deleted_inserts_nothing(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """The delete commits while the upload waits: the upload finds no session (the
    caller's 404 and the removal of its bytes), not a foreign-key error."""
    repo, other = Repo(pg_db.queries), await _second_instance(pg_db.url)
    try:
        await _create_session(pg_db, "s", tmp_path)
        delete, release = await _hold(pg_db, lambda x: repo.delete_session(x, "s"))
        upload = asyncio.create_task(
            other.write(lambda x: repo.insert_file(x, _new_file("f", "s")))
        )
        await _wait_until_blocked(pg_db.url)
        release.set()
        assert await delete == []
        assert await upload is None
        assert await pg_db.read(repo.all_file_paths) == set()
    finally:
        await other.close()


async def test_identical_uploads_with_dedupe_store_one(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    repo, other = Repo(pg_db.queries), await _second_instance(pg_db.url)
    digest = "ab" * 32
    try:
        await _create_session(pg_db, "s", tmp_path)
        first, release = await _hold(
            pg_db, lambda x: repo.insert_file_unless_duplicate(x, _new_file("a", "s", digest))
        )
        second = asyncio.create_task(
            other.write(lambda x: repo.insert_file_unless_duplicate(x, _new_file("b", "s", digest)))
        )
        await _wait_until_blocked(pg_db.url)
        release.set()
        row, duplicate = await first
        assert (row.id, duplicate) == ("a", False)
        again, duplicate = await second
        assert again is not None
        assert (again.id, duplicate) == ("a", True)
        assert await pg_db.read(repo.all_file_paths) == {"a.csv"}
    finally:
        await other.close()


async def test_file_delete_during_session_delete(pg_db: PostgresDatabase, tmp_path: Path) -> None:
    repo, other = Repo(pg_db.queries), await _second_instance(pg_db.url)
    try:
        await _create_session(pg_db, "s", tmp_path)
        await pg_db.write(lambda x: repo.insert_file(x, _new_file("a", "s")))
        await pg_db.write(lambda x: repo.insert_file(x, _new_file("b", "s")))
        delete_file, release = await _hold(pg_db, lambda x: repo.delete_file(x, "a"))
        delete_session = asyncio.create_task(other.write(lambda x: repo.delete_session(x, "s")))
        await _wait_until_blocked(pg_db.url)
        release.set()
        assert await delete_file == "a.csv"
        assert await delete_session == ["b.csv"]
    finally:
        await other.close()


# Two app instances on one database (and one uploads folder), through the API.


async def test_two_instances_creating_one_session_id_have_one_winner(
    make_client: MakeClient, settings: Settings
) -> None:
    a, b = await make_client(), await make_client()
    responses = await asyncio.gather(
        *(
            client.post("/api/csv/sessions", json={"session_id": "shared"})
            for _ in range(10)
            for client in (a, b)
        )
    )
    assert sorted(r.status for r in responses) == [201] + [400] * 19
    for client in (a, b):
        assert (await client.get("/api/csv/sessions/shared")).status == 200


async def test_deleting_through_one_instance_while_uploading_through_the_other(
    make_client: MakeClient, settings: Settings
) -> None:
    a, b = await make_client(), await make_client()
    for round_ in range(4):
        sid = f"race-{round_}"
        assert (await a.post("/api/csv/sessions", json={"session_id": sid})).status == 201
        uploads = [
            client.post("/api/csv/upload", data=upload_form(csv_bytes(50), session_id=sid))
            for client in (a, b) * 6
        ]
        results = await asyncio.gather(*uploads, b.delete(f"/api/csv/sessions/{sid}"))
        assert results[-1].status == 200
        assert {r.status for r in results[:-1]} <= {201, 404}
        for client in (a, b):
            await assert_problem(await client.get(f"/api/csv/sessions/{sid}"), 404)
        assert_consistent(settings)
    assert stored_state(settings)[:2] == (set(), set())


async def test_uploads_through_both_instances_are_all_recorded(
    make_client: MakeClient, settings: Settings
) -> None:
    a, b = await make_client(), await make_client()
    await a.post("/api/csv/sessions", json={"session_id": "both"})
    responses = await asyncio.gather(
        *(
            client.post("/api/csv/upload", data=upload_form(csv_bytes(i), session_id="both"))
            for i, client in enumerate((a, b) * 15)
        )
    )
    assert [r.status for r in responses] == [201] * 30
    files = (await (await b.get("/api/csv/sessions/both")).json())["csv_files"]
    assert len(files) == 30


def test_the_server_process_on_postgres(settings: Settings, pg_server_url: str) -> None:
    """``python -m csvstore --database postgresql://...``, as the README shows it."""
    server = ServerProcess(settings.data_dir, "--database", settings.database_url)
    server.start()
    try:
        base = f"{server.url}/api/csv"
        assert requests.post(f"{base}/sessions", json={"session_id": "p"}).status_code == 201
        files = {"file": ("data.csv", b"a,b\n1,2\n")}
        uploaded = requests.post(f"{base}/upload", files=files, data={"session_id": "p"})
        assert uploaded.status_code == 201, uploaded.text
        [listed] = requests.get(f"{base}/sessions").json()
        assert listed["csv_files"] == [uploaded.json()["file"]]
    finally:
        assert server.stop() == 0, server.log()
    assert_consistent(settings)


# Behaviour both engines must share, checked on whichever the suite runs on.


async def test_listing_order_is_bytewise(client: Client) -> None:
    ids = ["b", "B", "a", "A", "_x", "-y", "0", "a.b", "a-b", "a_b", "Zz", "z"]
    for sid in ids:
        assert (await client.post("/api/csv/sessions", json={"session_id": sid})).status == 201
    listed = [s["session_id"] for s in await (await client.get("/api/csv/sessions")).json()]
    assert listed == sorted(ids, key=str.encode)
    page = await client.get("/api/csv/sessions", params={"limit": "3", "after": "Zz"})
    assert [s["session_id"] for s in await page.json()] == ["_x", "a", "a-b"]


async def test_updated_at_moves_with_files_in_the_same_format(client: Client) -> None:
    await client.post("/api/csv/sessions", json={"session_id": "t"})
    created = await (await client.get("/api/csv/sessions/t")).json()
    assert created["updated_at"] == created["created_at"]
    resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes(), session_id="t"))
    file = (await resp.json())["file"]
    added = await (await client.get("/api/csv/sessions/t")).json()
    assert added["updated_at"] == file["created_at"]
    await asyncio.sleep(0.002)
    await client.delete(f"/api/csv/files/{file['id']}")
    removed = await (await client.get("/api/csv/sessions/t")).json()
    assert TIMESTAMP.match(removed["updated_at"]), removed["updated_at"]
    assert removed["updated_at"] > added["updated_at"]


def test_run_async_works_inside_a_running_loop() -> None:
    async def outer() -> int:
        return run_async(asyncio.sleep(0, result=7))

    assert asyncio.run(outer()) == 7


async def test_files_stored_before_their_listing_json_list_as_new_ones(
    pg_url: str, tmp_path: Path
) -> None:
    """Migration 0010 renders each file's API object once (a trigger on insert); the rows
    already there are rendered by the migration itself, and alike."""
    old_sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, old_sql)
    for newer in [*(old_sql / "postgres" / "migrations").glob("001[0-9]_*.sql")]:
        newer.unlink()
    for queries in old_sql.glob("**/*.sql"):  # and the queries of then: none of 0012, 0013
        text = queries.read_text()
        for name in ("header_rule", "escape_char"):
            for column in (f", {name}", f", :{name}", f", f.{name}"):
                text = text.replace(column, "")
        queries.write_text(text)
    facts = FileFacts(
        sha256="ab" * 32, encoding="utf-8", delimiter=";", quotechar='"', line_terminator="\r\n",
        has_header=True, columns=["a", "b"], column_count=2, row_count=3, ragged_rows=0,
        preamble_lines=1, skip_initial_space=False, comment_char="#",
        duplicate_columns=[], footer_lines=2,
    )  # fmt: skip
    files = [replace(_new_file(f"f{n}", "s1"), facts=facts) for n in (1, 2)]
    before = PostgresDatabase(pg_url, sql_dir=old_sql)
    await before.open()
    try:
        await _create_session(before, "s1", tmp_path)
        await before.write(lambda x: Repo(before.queries).insert_file(x, files[0]))
    finally:
        await before.close()
    after = PostgresDatabase(pg_url)
    await after.open()
    try:
        await after.write(lambda x: Repo(after.queries).insert_file(x, files[1]))
        store = CsvStore(after, LocalStorage(tmp_path / "uploads", tmp_path / "tmp"))
        [(_, page)] = await store.list_sessions_json(after="", limit=10)
    finally:
        await after.close()
    old, new = json.loads(page)["csv_files"]
    assert old["id"] == "f1"
    assert {**old, "id": "f2", "filename": "f2.csv"} == new
    assert new["footer_lines"] == 2
    assert new["columns"] == ["a", "b"]
    assert new["has_header"] is True


async def test_a_delete_whose_commit_answer_is_lost_leaves_no_bytes_after_the_check(
    settings: Settings, pg_server_url: str, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    """A file delete commits, and its answer is lost: 503, and no row is left to delete
    again. Its intent named the bytes with a live owner (this process), so every check
    spared them while that process lived: a deleted file's bytes kept for good."""
    async with open_store(settings):
        pass  # the schema first: a migration's function holds the same statement
    with CommitCuttingProxy(pg_server_url, after=True, statement=b"DELETE FROM files") as proxy:
        proxied = replace(settings, database_url=proxy.url(settings.database_url))
        client = await aiohttp_client(create_app(proxied))
        assert (await client.post("/api/csv/sessions", json={"session_id": "s"})).status == 201
        resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes(), session_id="s"))
        assert resp.status == 201, await resp.text()
        file_id = (await resp.json())["file"]["id"]
        resp = await client.delete(f"/api/csv/files/{file_id}")
        assert proxy.cut
        assert resp.status in (404, 503), await resp.text()
        assert (await client.get(f"/api/csv/files/{file_id}")).status == 404
        await client.close()
    async with open_store(settings) as store:
        await reconcile(store)
    objects, rows, _ = stored_state(settings)
    assert (objects, rows) == (set(), set())
    assert run_async(_intent_count(settings.database_url)) == 0


async def _intent_count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM upload_intents"))
    finally:
        await conn.close()
