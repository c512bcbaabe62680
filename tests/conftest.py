"""The real app on a temp folder, CSV factories, and the checks every test ends with."""

from __future__ import annotations

import asyncio
import faulthandler
import io
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient

from csvstore.config import Settings
from csvstore.db.queries import Queries
from csvstore.storage.local import STORE_MARKER
from csvstore.web.app import create_app
from tests import s3util

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
T = TypeVar("T")

# The URL of a PostgreSQL server's database (``make test-postgres`` sets it). When set, every
# test that builds the app from the ``settings`` fixture runs on a fresh database of that
# server instead of SQLite, and the PostgreSQL-only tests run instead of being skipped.
TEST_DATABASE_URL_ENV = "CSVSTORE_TEST_DATABASE_URL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "local_storage: reaches into the local uploads folder (or patches LocalWriter); "
        "skipped when the suite runs on S3",
    )


# How long the interpreter may take to exit once the suite is done.
EXIT_GRACE_S = 60


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Anything the suite leaves running that is not a daemon (an aiosqlite connection not
    closed, a thread pool not shut down) makes the interpreter wait for it at exit, forever:
    a CI run hung there, its tests all reported, until its time limit. After EXIT_GRACE_S,
    print every thread's stack -- the culprit's among them -- and exit with status 1."""
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With a PostgreSQL server (or an S3 bucket) given, run the tests that can use it: those
    building the app from the ``settings`` fixture, and the engine-only ones. The rest make
    their own SQLite settings or need no database, and ran already in ``make test``."""
    on_s3 = bool(s3util.configured_s3_url())
    if on_s3:
        skip = pytest.mark.skip(reason="looks into the local uploads folder; the suite is on S3")
        for item in items:
            if item.get_closest_marker("local_storage"):
                item.add_marker(skip)
    if not os.environ.get(TEST_DATABASE_URL_ENV) and not on_s3:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        uses = {"settings", "pg_server_url", "s3_settings"} & set(getattr(item, "fixturenames", ()))
        (keep if uses else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a test's running
    event loop: on a fresh loop in a thread of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def database_named(server_url: str, name: str) -> str:
    """The URL of another database on the same server."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _pg_admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_test_database(server_url: str) -> str:
    """A new, empty database on the server; its URL."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    run_async(_pg_admin(server_url, f'CREATE DATABASE "{name}"'))
    return database_named(server_url, name)


def drop_test_database(server_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    # FORCE: a connection some test left open must not keep the database alive.
    run_async(_pg_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg_file_paths(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(Queries(dialect="postgres").all_file_paths.sql)
    finally:
        await conn.close()
    return {row["file_path"] for row in rows}


def listed_file_paths(settings: Settings) -> set[str]:
    """The file paths the database lists, read apart from the app (SQLite or PostgreSQL)."""
    if settings.uses_postgres:
        return run_async(_pg_file_paths(settings.database_url))
    with sqlite3.connect(settings.database_path) as conn:
        return {row[0] for row in conn.execute(Queries().all_file_paths.sql)}


def csv_bytes(rows: int = 3, *, header: str = "id,name,amount", sep: str = ",") -> bytes:
    lines = [header.replace(",", sep)]
    lines += [sep.join([str(i), f"name {i}", f"{i * 1.5:.2f}"]) for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def upload_form(
    data: bytes | Any,
    *,
    session_id: str | None = "s1",
    filename: str | None = "data.csv",
    content_type: str | None = "text/csv",
    session_first: bool = True,
) -> FormData:
    """The multipart form of an upload; ``session_first=False`` is what curl -F sends."""
    if isinstance(data, bytes):
        # aiohttp warns (an error here) about large raw bytes bodies; a stream is fine.
        data = io.BytesIO(data)
    form = FormData(quote_fields=False)  # names raw, as curl sends them
    if session_id is not None and session_first:
        form.add_field("session_id", session_id)
    form.add_field("file", data, filename=filename, content_type=content_type)
    if session_id is not None and not session_first:
        form.add_field("session_id", session_id)
    return form


BOUNDARY = "csvstore-test-boundary"


def raw_multipart(*parts: tuple[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A hand-built multipart body: each part is (its Content-Disposition value, its bytes)."""
    body = b""
    for disposition, data in parts:
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def assert_problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """Every error: the expected status, problem+json, and a readable ``detail``."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert len(body["detail"]) > 5
    assert "Traceback" not in body["detail"]
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", body["code"]), body
    assert body["type"] == f"urn:csvstore:problem:{body['code']}"
    return body  # type: ignore[no-any-return]


def stored_state(settings: Settings) -> tuple[set[str], set[str], list[str]]:
    """(files in uploads/, file paths the database lists, leftover temp files). On S3: every
    object under the prefix but the tus folder, and as the temp files the multipart uploads
    in progress there and the tus uploads' tail objects."""
    if settings.uses_s3:
        objects, uploads = s3util.listing(settings)
        # Resumable uploads' records (tus/<id>.json) are neither stored files nor leftovers;
        # their tail objects count as temp files: none may outlive its upload.
        tus = {name for name in objects if name.startswith("tus/")}
        tails = sorted(name for name in tus if ".tail." in name)
        return objects - tus - {STORE_MARKER}, listed_file_paths(settings), uploads + tails
    on_disk = set(stored_names(settings.uploads_dir))
    listed = listed_file_paths(settings)
    temps = (
        sorted(p.name for p in settings.temp_dir.iterdir()) if settings.temp_dir.exists() else []
    )
    if "tus" in temps:  # resumable uploads' folder (their records outlive the requests)
        temps.remove("tus")
    return on_disk, listed, temps


def stored_names(folder: Path) -> list[str]:
    """What a local uploads folder holds but the store id marker (csvstore/identity.py)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != STORE_MARKER)


def stored_bytes(settings: Settings, name: str) -> bytes | None:
    """The bytes stored under a name (a file's ``filename``), or None; either backend."""
    if settings.uses_s3:
        return s3util.read_object(settings, name)
    path = settings.uploads_dir / name
    return path.read_bytes() if path.exists() else None


def assert_consistent(settings: Settings) -> None:
    on_disk, listed, temps = stored_state(settings)
    assert on_disk == listed, f"on disk only: {on_disk - listed}; rows only: {listed - on_disk}"
    assert temps == [], f"temp files left behind: {temps}"


def _with_s3_prefix(base: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings, storing in a fresh prefix of the test bucket (subprocesses too)."""
    s3 = replace(
        base,
        storage=s3util.fresh_prefix_url(),
        s3_endpoint_url=os.environ.get(s3util.TEST_S3_ENDPOINT_ENV, ""),
        s3_part_size=s3util.TEST_PART_SIZE,
    )
    monkeypatch.setenv("CSVSTORE_STORAGE", s3.storage)
    monkeypatch.setenv("CSVSTORE_S3_ENDPOINT_URL", s3.s3_endpoint_url)
    monkeypatch.setenv("CSVSTORE_S3_PART_SIZE", str(s3.s3_part_size))
    return s3


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A temp data folder; with CSVSTORE_TEST_DATABASE_URL set, also a database of its own
    on that PostgreSQL server, dropped after the test; with CSVSTORE_TEST_S3_URL set, a
    fresh prefix of that bucket for the bytes, emptied after the test."""
    base = Settings(data_dir=tmp_path / "data", max_upload_size=200 * 1024 * 1024)
    if s3util.configured_s3_url():
        base = _with_s3_prefix(base, monkeypatch)
    try:
        yield from _with_test_database(base, monkeypatch)
    finally:
        if base.uses_s3:
            s3util.clear(base)


@pytest.fixture
def s3_settings(settings: Settings) -> Settings:
    """The ``settings`` of a test that needs S3; skipped unless the suite runs on S3."""
    if not settings.uses_s3:
        pytest.skip(f"S3 only: set {s3util.TEST_S3_URL_ENV} (make test-s3)")
    return settings


def _with_test_database(base: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    server_url = os.environ.get(TEST_DATABASE_URL_ENV, "")
    if not server_url:
        yield base
        return
    url = create_test_database(server_url)
    # The processes the test starts (``python -m csvstore check``) use the same database.
    monkeypatch.setenv("CSVSTORE_DATABASE_URL", url)
    try:
        yield replace(base, database_url=url)
    finally:
        drop_test_database(server_url, url)


@pytest.fixture
def pg_server_url() -> str:
    """The PostgreSQL server of CSVSTORE_TEST_DATABASE_URL; the test is skipped without one."""
    url = os.environ.get(TEST_DATABASE_URL_ENV, "")
    if not url:
        pytest.skip(f"PostgreSQL only: set {TEST_DATABASE_URL_ENV} (make test-postgres)")
    return url


# settings comes before aiohttp_client: fixtures are torn down in reverse, so the app (and
# its connections) is closed before the settings fixture drops the test's database.
@pytest.fixture
async def make_client(
    settings: Settings, aiohttp_client: Callable[..., Awaitable[Client]]
) -> AsyncIterator[MakeClient]:
    """Start the real app; after the test, check that disk and database agree."""
    used: list[Settings] = []

    async def make(custom: Settings | None = None) -> Client:
        chosen = custom or settings
        used.append(chosen)
        return await aiohttp_client(create_app(chosen))

    yield make
    for chosen in used:
        if chosen.uses_postgres or chosen.database_path.exists():
            assert_consistent(chosen)


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


@pytest.fixture
async def session(client: Client) -> str:
    resp = await client.post("/api/csv/sessions", json={"session_id": "s1"})
    assert resp.status == 201
    return "s1"


def dead_owner() -> str:
    """An upload intent's owner that has exited: a process that named itself, then ended."""
    named = subprocess.run(
        [sys.executable, "-c", "from csvstore.intents import this_owner; print(this_owner())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return named.stdout.strip()
