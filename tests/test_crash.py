"""Crashes, kills and shutdowns of the real server process.

The kill test drives ``python -m csvstore`` with concurrent uploads, deletes and session
creations, kills it with SIGKILL at random moments, restarts it, and checks after every
restart that every upload answered 201 (and not deleted since) is there with identical
bytes, that the uploads folder holds exactly the files the database lists, and that the
database passes its integrity check. ``make test`` runs a few kills; ``make stress`` sets
CSVSTORE_KILL_ROUNDS for the long run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import resource
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import requests

from csvstore.config import Settings
from csvstore.db.queries import Queries
from tests.conftest import stored_names
from tests.serverproc import ServerProcess

KILL_ROUNDS = int(os.environ.get("CSVSTORE_KILL_ROUNDS", "4"))
WORKERS = 12


@dataclass
class Ledger:
    """What the clients were told, and what they asked for without hearing back."""

    uploads: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (session, sha)
    files_deleted: set[str] = field(default_factory=set)  # acknowledged, or maybe
    sessions: set[str] = field(default_factory=set)  # acknowledged creations
    sessions_deleted: set[str] = field(default_factory=set)  # acknowledged, or maybe
    acked_ops: int = 0

    def expected_files(self) -> dict[str, str]:
        return {
            file_id: sha
            for file_id, (session, sha) in self.uploads.items()
            if file_id not in self.files_deleted and session not in self.sessions_deleted
        }


def _csv_body(rng: random.Random) -> bytes:
    rows = rng.choice([1, 10, 200, 5000, 40_000])
    salt = rng.randrange(1 << 30)
    lines = [b"id,value,note"] + [f"{i},{salt + i},row {i}".encode() for i in range(rows)]
    return b"\n".join(lines) + b"\n"


async def _worker(url: str, ledger: Ledger, rng: random.Random, seq: list[int]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                roll = rng.random()
                live = sorted(ledger.sessions - ledger.sessions_deleted)
                if roll < 0.1 or not live:
                    seq[0] += 1
                    sid = f"s{seq[0]}"
                    resp = await http.post(f"{url}/api/csv/sessions", json={"session_id": sid})
                    if resp.status == 201:
                        ledger.sessions.add(sid)
                        ledger.acked_ops += 1
                elif roll < 0.8:
                    sid = rng.choice(live)
                    body = _csv_body(rng)
                    form = aiohttp.FormData()
                    form.add_field("session_id", sid)
                    form.add_field("file", body, filename="data.csv", content_type="text/csv")
                    resp = await http.post(f"{url}/api/csv/upload", data=form)
                    if resp.status == 201:
                        file_id = (await resp.json())["file"]["id"]
                        ledger.uploads[file_id] = (sid, hashlib.sha256(body).hexdigest())
                        ledger.acked_ops += 1
                elif roll < 0.95 and ledger.uploads:
                    file_id = rng.choice(sorted(ledger.uploads))
                    ledger.files_deleted.add(file_id)  # maybe deleted from here on
                    resp = await http.delete(f"{url}/api/csv/files/{file_id}")
                    ledger.acked_ops += resp.status == 200
                elif len(live) > 2:
                    sid = rng.choice(live)
                    ledger.sessions_deleted.add(sid)
                    resp = await http.delete(f"{url}/api/csv/sessions/{sid}")
                    ledger.acked_ops += resp.status == 200
            await asyncio.sleep(0)


def _verify(settings: Settings, ledger: Ledger) -> int:
    """After a restart: exactly the promised files, byte for byte, and a sound database."""
    with sqlite3.connect(f"file:{settings.database_path}?mode=ro", uri=True) as conn:
        assert conn.execute(Queries().integrity_check.sql).fetchall() == [("ok",)]
        listed = {row[0] for row in conn.execute(Queries().all_file_paths.sql)}
    on_disk = set(stored_names(settings.uploads_dir))
    assert on_disk == listed, f"disk only: {on_disk - listed}, rows only: {listed - on_disk}"
    assert list(settings.temp_dir.iterdir()) == []
    expected = ledger.expected_files()
    for file_id, sha in expected.items():
        path = settings.uploads_dir / f"{file_id}.csv"
        assert path.exists(), f"upload {file_id} answered 201 but is gone"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    return len(expected)


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    server = ServerProcess(settings.data_dir)
    rng = random.Random(20261127)
    ledger = Ledger()
    seq = [0]
    checked = 0
    server.start()
    try:
        for _ in range(KILL_ROUNDS):

            async def load_then_kill() -> None:
                tasks = [
                    asyncio.create_task(
                        _worker(server.url, ledger, random.Random(rng.random()), seq)
                    )
                    for _ in range(WORKERS)
                ]
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                server.kill()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run(load_then_kill())
            server.start()
            checked = _verify(settings, ledger)
        assert ledger.acked_ops > KILL_ROUNDS * 5, "the load never got going"
        assert checked > 0
    finally:
        server.stop()
    print(
        f"\nkill test: {KILL_ROUNDS} kills survived, {len(ledger.uploads)} acknowledged uploads, "
        f"{checked} checked byte for byte after the last restart"
    )


def _multipart(session: str, body: bytes) -> tuple[bytes, bytes, bytes]:
    boundary = "slowboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n{session}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    total = len(head) + len(body) + len(tail)
    request = (
        "POST /api/csv/upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    return request + head, body, tail


@pytest.mark.parametrize("finishes_in_time", [True, False])
def test_sigterm_lets_uploads_finish_within_the_grace_period(
    tmp_path: Path, finishes_in_time: bool
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    server = ServerProcess(settings.data_dir, "--shutdown-grace", "1.5")
    server.start()
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s"})
        body = b"a,b\n" + b"1,2\n" * 200_000
        start, middle, tail = _multipart("s", body)
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(start + middle[: len(middle) // 2])
        time.sleep(0.5)  # the upload is in flight
        assert server.proc is not None
        server.proc.send_signal(15)
        time.sleep(0.5)
        with pytest.raises(requests.ConnectionError):  # no longer accepting
            requests.get(f"{server.url}/api/csv/sessions", timeout=2)
        if finishes_in_time:
            sock.sendall(middle[len(middle) // 2 :] + tail)
            answer = sock.recv(65536).decode()
            assert answer.startswith("HTTP/1.1 201"), answer
        code = server.proc.wait(timeout=15)
        sock.close()
        assert code == 0
    finally:
        server.stop()
    with sqlite3.connect(settings.database_path) as conn:
        rows = conn.execute(Queries().all_file_paths.sql).fetchall()
    on_disk = set(stored_names(settings.uploads_dir))
    assert on_disk == {row[0] for row in rows}
    assert len(on_disk) == (1 if finishes_in_time else 0)
    assert list(settings.temp_dir.iterdir()) == []  # the aborted upload's temp file is gone
    # The aborted one is the server going away, not failing: a 503 in its access line.
    access = [line for line in server.log().splitlines() if "POST /api/csv/upload" in line]
    assert [" 201 " in line for line in access] == [finishes_in_time]
    assert all(" 500 " not in line for line in access), access
    if not finishes_in_time:
        assert " 503 " in access[0], access


def test_a_thousand_idle_connections_do_not_block_others(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    server = ServerProcess(tmp_path / "data")
    server.start()
    idle = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        for sock in idle[::2]:
            sock.sendall(b"POST /api/csv/upload HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        resp = requests.post(
            f"{server.url}/api/csv/sessions", json={"session_id": "busy"}, timeout=10
        )
        assert resp.status_code == 201
        assert requests.get(f"{server.url}/api/csv/sessions/busy", timeout=10).status_code == 200
    finally:
        for sock in idle:
            sock.close()
        assert server.stop() == 0


def test_a_connection_that_never_finishes_its_headers_is_closed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--idle-timeout", "1")
    server.start()
    try:
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.settimeout(10)
        started = time.monotonic()
        slow.sendall(b"POST /api/csv/upload HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # a header line now and then, never the blank line that ends them
            time.sleep(0.3)
            with contextlib.suppress(OSError):
                slow.sendall(b"X-Slow: 1\r\n")
        assert slow.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < 5
        slow.close()
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    finally:
        assert server.stop() == 0
