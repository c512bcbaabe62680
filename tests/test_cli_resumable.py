"""The command-line client resumes large uploads by default (tus), through dropped connections."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from csvstore.cli.http import Api
from csvstore.cli.resumable import TusUpload
from csvstore.cli.upload import Source, UploadOptions
from csvstore.config import Settings
from tests import s3util
from tests.serverproc import ServerProcess
from tests.tusproxy import DroppingProxy

SIZE = 10 * 1024 * 1024  # above the client's 8 MiB threshold for resumable uploads


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CSVSTORE_")}
    return subprocess.run(
        [sys.executable, "-m", "csvstore", *args, "--json"],
        env={**environ, "CSVSTORE_URL": url},
        capture_output=True,
        timeout=300,
        check=False,
    )


def big_csv(path: Path) -> bytes:
    rows = [b"id,name,amount\n"]
    total = i = 0
    while total < SIZE:
        rows.append(f"{i},name {i},{i * 0.5:.1f}\n".encode())
        total += len(rows[-1])
        i += 1
    body = b"".join(rows)
    path.write_bytes(body)
    return body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("cli-tus")) / "data")
    proc.start()
    requests.post(f"{proc.url}/api/csv/sessions", json={"session_id": "c"}, timeout=30)
    yield proc
    assert proc.stop() == 0


@pytest.mark.parametrize("sha256", [False, True], ids=["plain", "checksums"])
def test_a_large_upload_resumes_through_dropped_connections(
    server: ServerProcess, tmp_path: Path, sha256: bool
) -> None:
    path = tmp_path / "big.csv"
    body = big_csv(path)
    with DroppingProxy(server.port, [SIZE * 3 // 10, SIZE * 7 // 10]) as proxy:
        # --resend: both runs send the same bytes into one session, and the transfer is tested
        extra = ["--sha256", "--resend"] if sha256 else ["--resend"]
        result = run_cli(proxy.url, "upload", "c", str(path), *extra)
        assert proxy.cuts == 2
    assert result.returncode == 0, result.stderr.decode()
    report: dict[str, Any] = json.loads(result.stdout)
    [item] = report["files"]
    assert item["status"] == "stored"
    file_id = item["file"]["id"]
    assert item["file"]["sha256"] == hashlib.sha256(body).hexdigest()
    stored = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=60)
    assert stored.content == body


def test_without_resume_a_dropped_connection_fails_the_file(
    server: ServerProcess, tmp_path: Path
) -> None:
    path = tmp_path / "big.csv"
    big_csv(path)
    with DroppingProxy(server.port, [SIZE // 2]) as proxy:
        result = run_cli(proxy.url, "upload", "c", str(path), "--no-resume", "--resend")
    assert result.returncode == 3, result.stderr.decode()
    [item] = json.loads(result.stdout)["files"]
    assert item["status"] == "failed"


def test_dedupe_reports_a_resumed_duplicate(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    big_csv(path)
    requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "d"}, timeout=30)
    first = json.loads(run_cli(server.url, "upload", "d", str(path), "--dedupe").stdout)
    again = json.loads(run_cli(server.url, "upload", "d", str(path), "--dedupe", "--resend").stdout)
    assert first["files"][0]["status"] == "stored"
    assert again["files"][0]["status"] == "duplicate"
    assert again["files"][0]["file"]["id"] == first["files"][0]["file"]["id"]


def _tus_create(server: ServerProcess, size: int) -> str:
    metadata = f"session_id {b64('c')},filename {b64('held.csv')}"
    created = requests.post(
        f"{server.url}/api/csv/tus/",
        headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": metadata},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    return str(created.headers["Location"])


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


TUS = {"Tus-Resumable": "1.0.0"}
# In-process, under 1 MiB: aiohttp warns about larger bytes bodies, and warnings are errors.
SMALL_PATCH = 512 * 1024


def _send_with(strategy: TusUpload, server: ServerProcess, location: str, path: Path) -> str:
    """The client's PATCH loop on an upload created beforehand; the stored file's path."""
    source = Source(path, path.stat().st_size)

    async def go() -> str:
        async with Api(server.url, None) as api:
            with path.open("rb") as handle:
                return await strategy._send(
                    api, api.url(location), handle, source, UploadOptions(), lambda _: None
                )

    return asyncio.run(go())


def test_a_409_saying_complete_on_the_last_attempt_is_the_stored_file(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The upload was completed meanwhile (an earlier PATCH whose answer was lost): the 409
    carries the stored file's Content-Location, and that is success, even when it comes on
    the last attempt (here the only one)."""
    path = tmp_path / "done.csv"
    body = big_csv(path)
    location = _tus_create(server, len(body))
    whole = requests.patch(
        f"{server.url}{location}",
        data=body,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        timeout=60,
    )
    assert whole.status_code == 204, whole.text
    stored_at = _send_with(TusUpload(attempts=0, patch_size=SMALL_PATCH), server, location, path)
    assert stored_at == whole.headers["Content-Location"]


def test_an_upload_held_by_another_request_is_waited_for_beyond_the_attempts(
    server: ServerProcess, tmp_path: Path
) -> None:
    """423 answers (another request holds the upload; on S3, a dead process's lease for up
    to 30 s) are waited out for their Retry-After, not counted among the attempts: with
    one attempt, the client still gets through once the holder finishes 4 s later."""
    path = tmp_path / "held.csv"
    body = big_csv(path)
    location = _tus_create(server, len(body))
    holder = _hold_with_a_half_sent_patch(server, location, body)
    try:
        time.sleep(0.3)
        finisher = threading.Timer(4.0, lambda: holder.sendall(body[_held(body) :]))
        finisher.start()
        started = time.monotonic()
        stored_at = _send_with(
            TusUpload(attempts=1, pause=0.2, patch_size=SMALL_PATCH), server, location, path
        )
        assert time.monotonic() - started > 3.5
        finisher.join()
    finally:
        holder.close()
    content = requests.get(f"{server.url}{stored_at}/content", timeout=60)
    assert content.content == body


def _hold_with_a_half_sent_patch(
    server: ServerProcess, location: str, body: bytes
) -> socket.socket:
    holder = socket.create_connection(("127.0.0.1", server.port))
    holder.sendall(
        (
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body[: _held(body)]
    )
    return holder


def _held(body: bytes) -> int:
    """Past a part (5 MiB in the tests): on S3 a PATCH takes the lease to send one."""
    return len(body) * 3 // 4


def test_after_a_crash_the_client_waits_out_the_dead_lease(
    s3_settings: Settings, tmp_path: Path
) -> None:
    """S3: a process SIGKILLed mid-PATCH leaves its lease, and the upload answers 423 until
    it lapses (here 45 s, longer than the 36 s that the 8 attempts' pauses add up to). The
    client waits for each 423's Retry-After and finishes the upload, with the client's
    default attempts and pauses."""
    server = ServerProcess(s3_settings.data_dir, "--tus-lease", "45")
    server.start()
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "c"}, timeout=30)
        path = tmp_path / "leased.csv"
        body = big_csv(path)
        location = _tus_create(server, len(body))
        holder = _hold_with_a_half_sent_patch(server, location, body)
        record = f"tus/{location.rsplit('/', 1)[1]}.json"
        deadline = time.monotonic() + 30
        while not json.loads(s3util.read_object(s3_settings, record) or b"{}").get("owner"):
            assert time.monotonic() < deadline, "the half-sent PATCH never took the lease"
            time.sleep(0.05)
        server.kill()
        holder.close()
        server.start()
        started = time.monotonic()
        stored_at = _send_with(TusUpload(patch_size=SMALL_PATCH), server, location, path)
        assert time.monotonic() - started > 30  # the lease was there, and waited out
        content = requests.get(f"{server.url}{stored_at}/content", timeout=60)
        assert content.content == body
    finally:
        assert server.stop() == 0, server.log()


def test_a_server_that_takes_no_byte_is_given_up_on(tmp_path: Path) -> None:
    """Every PATCH answered 204 with the offset unchanged (a server misconfigured to read
    nothing) counts as a failure: the client gives up after its attempts instead of
    sending the same bytes forever (it sent 60,000 PATCHes in ten minutes)."""
    from aiohttp import web

    patches = 0

    async def patch(request: web.Request) -> web.Response:
        nonlocal patches
        patches += 1
        await request.read()
        return web.Response(status=204, headers={**TUS, "Upload-Offset": "0"})

    async def head(request: web.Request) -> web.Response:
        return web.Response(headers={**TUS, "Upload-Offset": "0", "Upload-Length": "10"})

    path = tmp_path / "x.csv"
    path.write_bytes(b"a,b\n1,2\n3,\n")

    async def go() -> None:
        app = web.Application()
        app.router.add_route("PATCH", "/api/csv/tus/u", patch)
        app.router.add_route("HEAD", "/api/csv/tus/u", head)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with Api(f"http://127.0.0.1:{port}", None) as api:
                with path.open("rb") as handle, pytest.raises(Exception, match="without taking"):
                    await TusUpload(attempts=3, pause=0.01)._send(
                        api, api.url("/api/csv/tus/u"), handle,
                        Source(path, path.stat().st_size), UploadOptions(), lambda _: None,
                    )  # fmt: skip
        finally:
            await runner.cleanup()

    asyncio.run(go())
    assert patches == 4  # the first and three attempts more
