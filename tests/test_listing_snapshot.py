"""The session listing reads each page as one snapshot: a session listed with a file it had
when the page was asked for never shows ``csv_files: []``, however many sessions are being
created meanwhile. Against the real server process, on SQLite or (make test-postgres) on
PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from csvstore.config import Settings
from tests.conftest import csv_bytes
from tests.serverproc import ServerProcess

# Bounded load on 127.0.0.1: this many sessions, this many at once, at most this long.
SESSIONS = 240
CREATORS = 8
TIME_LIMIT_S = 60.0
PAGE = 40


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerProcess]:
    # The settings fixture put CSVSTORE_DATABASE_URL in the environment when on PostgreSQL.
    proc = ServerProcess(settings.data_dir)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def _create_with_file(http: aiohttp.ClientSession, url: str, done: dict[str, float]) -> None:
    # Random ids: each new session sorts somewhere inside the pages being listed.
    session_id = uuid.uuid4().hex
    async with http.post(f"{url}/api/csv/sessions", json={"session_id": session_id}) as resp:
        assert resp.status == 201, await resp.text()
    form = aiohttp.FormData()
    form.add_field("session_id", session_id)
    form.add_field("file", csv_bytes(), filename="one.csv", content_type="text/csv")
    async with http.post(f"{url}/api/csv/upload", data=form) as resp:
        assert resp.status == 201, await resp.text()
    done[session_id] = time.monotonic()


async def _creators(http: aiohttp.ClientSession, url: str, done: dict[str, float]) -> None:
    queue = list(range(SESSIONS))

    async def worker() -> None:
        while queue:
            queue.pop()
            await _create_with_file(http, url, done)

    await asyncio.gather(*(worker() for _ in range(CREATORS)))


async def _run(url: str) -> tuple[int, list[str]]:
    done: dict[str, float] = {}  # session id -> when its upload was answered
    empty_but_committed: list[str] = []
    listings = 0
    deadline = time.monotonic() + TIME_LIMIT_S
    async with aiohttp.ClientSession() as http:
        creating = asyncio.create_task(_creators(http, url, done))
        while not creating.done() and time.monotonic() < deadline:
            asked_at = time.monotonic()
            async with http.get(f"{url}/api/csv/sessions?limit={PAGE}") as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            listings += 1
            for session in page:
                answered = done.get(session["session_id"])
                if answered is not None and answered < asked_at and not session["csv_files"]:
                    empty_but_committed.append(session["session_id"])
        await creating
    return listings, empty_but_committed


def test_no_listed_session_loses_its_committed_file_under_concurrent_creates(
    server: ServerProcess,
) -> None:
    listings, wrong = asyncio.run(_run(server.url))
    assert listings > 20, "the listing loop hardly ran: the test proved nothing"
    assert wrong == [], f"{len(wrong)} listed sessions showed no file of {listings} listings"
