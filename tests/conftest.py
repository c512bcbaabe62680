"""The real app on a temp folder, CSV factories, and the checks every test ends with."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient

from csvstore.app import create_app
from csvstore.config import Settings
from csvstore.queries import Queries

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


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
    form = FormData()
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
    return body  # type: ignore[no-any-return]


def stored_state(settings: Settings) -> tuple[set[str], set[str], list[str]]:
    """(files in uploads/, file paths the database lists, leftover temp files)."""
    on_disk = (
        {p.name for p in settings.uploads_dir.iterdir()} if settings.uploads_dir.exists() else set()
    )
    with sqlite3.connect(settings.database_path) as conn:
        listed = {row[0] for row in conn.execute(Queries().all_file_paths.sql)}
    temps = (
        sorted(p.name for p in settings.temp_dir.iterdir()) if settings.temp_dir.exists() else []
    )
    return on_disk, listed, temps


def assert_consistent(settings: Settings) -> None:
    on_disk, listed, temps = stored_state(settings)
    assert on_disk == listed, f"on disk only: {on_disk - listed}; rows only: {listed - on_disk}"
    assert temps == [], f"temp files left behind: {temps}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_upload_size=200 * 1024 * 1024)


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings
) -> AsyncIterator[MakeClient]:
    """Start the real app; after the test, check that disk and database agree."""
    used: list[Settings] = []

    async def make(custom: Settings | None = None) -> Client:
        chosen = custom or settings
        used.append(chosen)
        return await aiohttp_client(create_app(chosen))

    yield make
    for chosen in used:
        if chosen.database_path.exists():
            assert_consistent(chosen)


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


@pytest.fixture
async def session(client: Client) -> str:
    resp = await client.post("/api/csv/sessions", json={"session_id": "s1"})
    assert resp.status == 201
    return "s1"
