"""The database layer on real SQLite files: migrations, named queries, group commit, start-up."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from csvstore.analysis.stream import FileFacts
from csvstore.db.queries import SQL_DIR, Queries, Query, load_migrations, parse_queries
from csvstore.db.repo import Repo
from csvstore.db.sqlite import Executor, SqliteDatabase, split_statements
from csvstore.errors import InsufficientStorage
from csvstore.maintenance.reconcile import startup_check
from csvstore.service import CsvStore
from csvstore.storage.local import LocalStorage


def test_parse_queries_reads_names_kinds_and_docs() -> None:
    queries = parse_queries(
        "-- name: one^\n-- the doc\nSELECT 1;\n\n-- name: many\nSELECT 2\nUNION SELECT 3;\n"
    )
    assert queries["one"].returns_one
    assert queries["one"].sql == "SELECT 1"
    assert not queries["many"].returns_one
    assert queries["many"].sql == "SELECT 2\nUNION SELECT 3"
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="no SQL"):
        parse_queries("-- name: empty\n-- only a comment\n")


def test_every_named_query_compiles_against_the_schema(tmp_path: Path) -> None:
    """EXPLAIN compiles each query in sql/ without running it: catches typos in SQL files."""
    conn = sqlite3.connect(tmp_path / "x.db")
    for migration in load_migrations(SQL_DIR / "migrations"):
        conn.executescript(migration.sql)
    conn.executescript(Queries().create_migrations_table.sql)
    for query in Queries()._by_name.values():
        if query.sql.upper().startswith(("BEGIN", "PRAGMA")):
            continue
        params = dict.fromkeys(re.findall(r":([a-z_0-9]+)", query.sql))
        conn.execute(f"EXPLAIN {query.sql}", params)
    conn.close()


def test_split_statements_keeps_triggers_whole() -> None:
    script = (SQL_DIR / "migrations" / "0001_init.sql").read_text()
    statements = split_statements(script)
    triggers = [s for s in statements if "CREATE TRIGGER" in s]
    assert len(triggers) == 2
    assert all(s.rstrip().endswith("END;") for s in triggers)
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("SELECT 1;\nSELECT 2")


async def test_migrations_apply_once_and_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "db" / "csvstore.db"
    for _ in range(2):  # a restart applies nothing new
        db = SqliteDatabase(path)
        await db.open()
        await db.close()
    with sqlite3.connect(path) as conn:
        versions = [row[0] for row in conn.execute(Queries().applied_migrations.sql)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert versions == [m.version for m in load_migrations(SQL_DIR / "migrations")]


async def test_two_processes_opening_at_once_migrate_once(tmp_path: Path) -> None:
    """Several connections opening a new file together: switching it to WAL mode answered
    "database is locked" at once to some of them (about one round in ten), without waiting.
    Fifty rounds, so that the race is met."""
    for round_ in range(50):
        path = tmp_path / f"csvstore-{round_}.db"
        dbs = [SqliteDatabase(path) for _ in range(3)]
        await asyncio.gather(*(db.open() for db in dbs))
        for db in dbs:
            await db.close()
        with sqlite3.connect(path) as conn:
            assert len(list(conn.execute(Queries().applied_migrations.sql))) == len(
                load_migrations(SQL_DIR / "migrations")
            )


async def test_an_open_that_fails_leaves_no_connection_behind(tmp_path: Path) -> None:
    """Each aiosqlite connection has a thread that is not a daemon: one left open by a failed
    start kept the process from exiting (a CI run hung on it until it was killed)."""
    path = tmp_path / "csvstore.db"
    path.write_bytes(b"not a database, " * 1024)
    db = SqliteDatabase(path)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        await db.open()
    await asyncio.sleep(0.1)  # a closed connection's thread ends just after close() returns
    workers = [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]
    assert workers == []


async def test_group_commit_batches_and_isolates_failures(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "csvstore.db")
    await db.open()
    q = db.queries
    try:

        async def create(session_id: str) -> object:
            return await db.write(
                lambda x: x.one(
                    q.insert_session,
                    {
                        "id": session_id + "-pk",
                        "session_id": session_id,
                        "created_at": "t",
                        "expires_at": None,
                    },
                )
            )

        async def broken(x: Executor) -> None:
            await x.one(
                q.insert_session,
                {"id": None, "session_id": "bad", "created_at": None, "expires_at": None},
            )

        results = await asyncio.gather(
            *(create(f"s{i}") for i in range(50)), db.write(broken), return_exceptions=True
        )
        assert all(isinstance(r, dict) for r in results[:50])
        assert isinstance(results[50], sqlite3.IntegrityError)
        rows = await db.read(lambda x: x.all(q.list_sessions, {"after": "", "limit": 100}))
        assert len(rows) == 50  # the failure reached only its caller
    finally:
        await db.close()


async def test_startup_check_removes_temp_and_orphan_files(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "csvstore.db")
    await db.open()
    storage = LocalStorage(tmp_path / "uploads", tmp_path / "tmp")
    try:
        store = CsvStore(db, storage)
        await startup_check(store)
        await store.create_session("s")
        kept = f"{uuid.uuid4()}.csv"  # only csvstore's names are looked at
        writer = await storage.begin(kept)
        await writer.write(b"a\n")
        await store.publish_upload(
            writer,
            file_id="kept",
            session_id="s",
            original_filename="a.csv",
            facts=FileFacts(),
        )
        (tmp_path / "tmp" / "stale.csv.part").write_bytes(b"half")
        (tmp_path / "uploads" / f"{uuid.uuid4()}.csv").write_bytes(b"no row")
        report = await startup_check(store)
        assert (report.temp_files_removed, report.orphan_files_removed) == (1, 1)
        assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == [kept]
        assert list((tmp_path / "tmp").iterdir()) == []
        again = await startup_check(store)  # idempotent
        assert (again.temp_files_removed, again.orphan_files_removed) == (0, 0)
    finally:
        await db.close()


async def test_disk_full_in_sqlite_is_insufficient_storage(tmp_path: Path) -> None:
    """SQLite reports a full disk as an OperationalError; callers get a 507 error instead."""
    db = SqliteDatabase(tmp_path / "csvstore.db")
    await db.open()
    try:
        full = await _run_with_max_pages(db)
        assert isinstance(full, InsufficientStorage)
        assert "disk is full" in full.detail
    finally:
        await db.close()


async def _run_with_max_pages(db: SqliteDatabase) -> Exception | None:
    """Cap the database's size so the next big write really fails with SQLITE_FULL."""
    q = db.queries

    async def grow(x: Executor) -> None:
        for i in range(2000):
            await x.one(
                q.insert_session,
                {
                    "id": f"pk-{i}-" + "x" * 900,
                    "session_id": f"s{i}",
                    "created_at": "t",
                    "expires_at": None,
                },
            )

    writer = db._writer
    assert writer is not None
    await db._on_writer_thread(writer.execute, "PRAGMA max_page_count = 40")
    try:
        await db.write(grow)
    except Exception as exc:
        return exc
    return None


_SYNCHRONOUS = Query(name="synchronous", sql="PRAGMA synchronous", returns_one=True)


async def _synchronous(x: Executor) -> int:
    row = await x.one(_SYNCHRONOUS)
    assert row is not None
    return int(row["synchronous"])


@pytest.mark.parametrize("full", [True, False])
async def test_a_write_that_needs_no_fsync_is_visible_at_once_and_never_waits_for_one(
    tmp_path: Path, full: bool
) -> None:
    """Upload intents (durable=False) commit under synchronous=NORMAL, ahead of the durable
    writes queued with them; every durable write still commits under FULL, even right after."""
    db = SqliteDatabase(tmp_path / "csvstore.db", synchronous_full=full)
    await db.open()
    key = f"{uuid.uuid4()}.csv"
    try:
        order: list[str] = []

        async def durable(i: int) -> int:
            level = await db.write(_synchronous)
            order.append(f"durable{i}")
            return level

        async def intent(x: Executor) -> int:
            await Repo(db.queries).add_intent(x, key, "owner")
            return await _synchronous(x)

        async def lazy() -> int:
            level = await db.write(intent, durable=False)
            order.append("lazy")
            # Another connection (another process's check) sees it as soon as it returns.
            with contextlib.closing(sqlite3.connect(tmp_path / "csvstore.db")) as other:
                seen = other.execute("SELECT storage_key FROM upload_intents").fetchall()
            assert seen == [(key,)]
            return level

        # The queue fills while the writer is busy, so all six make one batch.
        levels = await asyncio.gather(*(durable(i) for i in range(5)), lazy())
        # Under FULL it commits first, not behind the durable writes' fsync; under NORMAL
        # (--durability fast) no write waits for an fsync, so one batch keeps queue order.
        assert order.index("lazy") == (0 if full else 5)
        assert levels == ([2] * 5 + [1] if full else [1] * 6)  # 2 = FULL, 1 = NORMAL
        assert await db.write(_synchronous) == (2 if full else 1)
    finally:
        await db.close()
