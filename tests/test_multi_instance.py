"""Two ``python -m csvstore`` processes on different ports sharing one PostgreSQL database
and one bucket, as behind a load balancer: whatever one does, the other sees.

Runs under ``make test-s3``; skipped unless the suite has both a PostgreSQL server and a
bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import requests

from csvstore.config import Settings
from csvstore.config_values import MiB
from tests.conftest import assert_consistent, stored_state
from tests.serverproc import ServerProcess

LINE = b"12345,some text,3.14159,2024-01-01\n"


def csv_of_size(size: int) -> bytes:
    return (b"id,text,value,day\n" + LINE * (size // len(LINE) + 1))[:size]


@pytest.fixture
def shared(s3_settings: Settings, tmp_path: Path) -> Settings:
    if not s3_settings.uses_postgres:
        pytest.skip("needs PostgreSQL and S3 (make test-s3)")
    return s3_settings


@pytest.fixture
def pair(shared: Settings, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two instances, each with a data folder of its own; the database and bucket come from
    the environment the ``settings`` fixture set (CSVSTORE_DATABASE_URL, CSVSTORE_STORAGE)."""
    a = ServerProcess(tmp_path / "a-data")
    b = ServerProcess(tmp_path / "b-data")
    a.start()
    try:
        b.start()
        try:
            yield a, b
        finally:
            assert b.stop() == 0, b.log()
    finally:
        assert a.stop() == 0, a.log()
    for server in (a, b):
        assert "Traceback" not in server.log(), server.log()[-3000:]
    assert_consistent(shared)


def test_what_one_instance_does_the_other_sees(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = (f"{server.url}/api/csv" for server in pair)
    assert requests.post(f"{a}/sessions", json={"session_id": "shared"}).status_code == 201
    assert requests.get(f"{b}/sessions/shared").status_code == 200
    data = csv_of_size(7 * MiB)  # two parts on S3
    uploaded = requests.post(
        f"{a}/upload", files={"file": ("data.csv", data)}, data={"session_id": "shared"}
    )
    assert uploaded.status_code == 201, uploaded.text
    file = uploaded.json()["file"]

    [listed] = requests.get(f"{b}/sessions").json()
    assert listed["csv_files"] == [file]
    content = requests.get(f"{b}/files/{file['id']}/content")
    assert content.content == data
    assert content.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    part = requests.get(f"{b}/files/{file['id']}/content", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == data[100:200]

    assert requests.delete(f"{b}/files/{file['id']}").status_code == 200
    assert requests.get(f"{a}/files/{file['id']}").status_code == 404
    assert requests.get(f"{a}/files/{file['id']}/content").status_code == 404
    assert requests.delete(f"{a}/sessions/shared").status_code == 200
    assert requests.get(f"{b}/sessions/shared").status_code == 404


async def _post_json(http: aiohttp.ClientSession, url: str, body: object) -> int:
    async with http.post(url, json=body) as resp:
        await resp.read()
        return resp.status


async def _upload(http: aiohttp.ClientSession, url: str, data: bytes, session_id: str) -> int:
    form = aiohttp.FormData()
    form.add_field("session_id", session_id)
    form.add_field("file", io.BytesIO(data), filename="data.csv", content_type="text/csv")
    async with http.post(url, data=form) as resp:
        await resp.read()
        return resp.status


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def test_concurrent_creates_of_one_id_across_instances_have_one_winner(
    pair: tuple[ServerProcess, ServerProcess], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    for round_ in range(10):
        body = {"session_id": f"race-{round_}"}
        statuses = await asyncio.gather(
            *(
                _post_json(http, f"{server.url}/api/csv/sessions", body)
                for server in (a, b, a, b, a, b)
            )
        )
        assert sorted(statuses) == [201, 400, 400, 400, 400, 400], statuses


async def test_concurrent_uploads_through_both_into_one_session_are_all_recorded(
    pair: tuple[ServerProcess, ServerProcess], http: aiohttp.ClientSession, shared: Settings
) -> None:
    a, b = pair
    assert await _post_json(http, f"{a.url}/api/csv/sessions", {"session_id": "both"}) == 201
    bodies = [csv_of_size(1000 + i) for i in range(38)] + [csv_of_size(6 * MiB + i) for i in (1, 2)]
    statuses = await asyncio.gather(
        *(
            _upload(http, f"{server.url}/api/csv/upload", body, "both")
            for server, body in zip((a, b) * 20, bodies, strict=True)
        )
    )
    assert statuses == [201] * 40
    for server in (a, b):
        async with http.get(f"{server.url}/api/csv/sessions/both") as resp:
            files = (await resp.json())["csv_files"]
        assert sorted(f["file_size"] for f in files) == sorted(len(body) for body in bodies)
    on_store, listed, in_flight = stored_state(shared)
    assert on_store == listed
    assert len(listed) == 40
    assert in_flight == []


async def test_an_instance_starting_spares_the_others_upload_in_flight(
    shared: Settings, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """B's start-up check runs while A is in the middle of a multipart upload to the same
    bucket; A's upload completes, whole."""
    a = ServerProcess(tmp_path / "a-data")
    b = ServerProcess(tmp_path / "b-data")
    a.start()
    try:
        assert await _post_json(http, f"{a.url}/api/csv/sessions", {"session_id": "s"}) == 201
        data = csv_of_size(12 * MiB)
        go_on = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(data), MiB):
                if start == 8 * MiB:
                    await go_on.wait()
                yield data[start : start + MiB]

        form = aiohttp.FormData()
        form.add_field("session_id", "s")
        form.add_field("file", body(), filename="big.csv", content_type="text/csv")
        sending = asyncio.create_task(http.post(f"{a.url}/api/csv/upload", data=form))
        for _ in range(200):
            if stored_state(shared)[2]:
                break
            await asyncio.sleep(0.05)
        assert len(stored_state(shared)[2]) == 1  # A's multipart upload is open
        await asyncio.to_thread(b.start)  # B starts and checks the bucket meanwhile
        go_on.set()
        async with await sending as resp:
            assert resp.status == 201, await resp.text()
            file = (await resp.json())["file"]
        async with http.get(f"{b.url}/api/csv/files/{file['id']}/content") as got:
            assert await got.read() == data
    finally:
        assert b.stop() == 0, b.log()
        assert a.stop() == 0, a.log()
    assert_consistent(shared)
