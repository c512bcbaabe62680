"""Downloads whose stored bytes cannot be read, against the real server process.

Before the headers such a download is a problem+json answer; after them it can only end the
connection early, which the client reports as an error. Never a second response in the body.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from csvstore.config import Settings
from tests.serverproc import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("reads") / "data")
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def _upload(server: ServerProcess, session: str, name: str, data: bytes) -> dict[str, Any]:
    requests.post(f"{server.url}/api/csv/sessions", json={"session_id": session}, timeout=10)
    resp = requests.post(
        f"{server.url}/api/csv/upload",
        files={"file": (name, data, "text/csv")},
        data={"session_id": session},
        timeout=60,
    )
    assert resp.status_code in (200, 201), resp.text
    file: dict[str, Any] = resp.json()["file"]
    return file


def _stored_path(server: ServerProcess, file: dict[str, Any]) -> Path:
    path: Path = Settings(data_dir=server.data_dir).uploads_dir / file["filename"]
    assert path.exists()
    return path


def _curl(url: str, out: Path, *headers: str) -> tuple[int, str]:
    """curl's exit code and the status it saw; the body goes to ``out``."""
    args = [arg for header in headers for arg in ("-H", header)]
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-o", str(out), "-w", "%{http_code}", *args, url],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stdout


@pytest.mark.parametrize("range_header", [None, "bytes=2-"])
def test_missing_stored_file_is_a_problem_not_a_200(
    server: ServerProcess, tmp_path: Path, range_header: str | None
) -> None:
    file = _upload(server, f"gone-{bool(range_header)}", "gone.csv", b"a,b\n1,2\n3,4\n")
    _stored_path(server, file).unlink()
    url = f"{server.url}/api/csv/files/{file['id']}/content"
    headers = [f"Range: {range_header}"] if range_header else []

    out = tmp_path / "body"
    code, status = _curl(url, out, *headers)
    assert (code, status) == (0, "500")
    body = out.read_bytes()
    assert not body.startswith(b"HTTP/")
    problem = requests.get(url, headers=dict(h.split(": ", 1) for h in headers), timeout=10)
    assert problem.headers["Content-Type"] == "application/problem+json"
    assert problem.json()["status"] == 500
    assert f"stored bytes of file {file['id']} are missing" in problem.json()["detail"]
    # HEAD is answered from the same checks
    assert requests.head(url, timeout=10).status_code == 500

    async def with_aiohttp() -> tuple[int, bytes]:
        sent = dict(h.split(": ", 1) for h in headers)
        async with aiohttp.ClientSession() as client, client.get(url, headers=sent) as resp:
            return resp.status, await resp.read()

    status_seen, raw = asyncio.run(asyncio.wait_for(with_aiohttp(), 20))
    assert status_seen == 500
    assert b"HTTP/1.1" not in raw


def test_stored_file_of_another_size_is_a_problem(server: ServerProcess, tmp_path: Path) -> None:
    file = _upload(server, "cut", "cut.csv", b"a,b\n1,2\n3,4\n")
    path = _stored_path(server, file)
    os.truncate(path, 5)
    url = f"{server.url}/api/csv/files/{file['id']}/content"
    code, status = _curl(url, tmp_path / "body")
    assert (code, status) == (0, "500")
    assert "are 5 bytes long, not the 12 bytes recorded" in requests.get(url, timeout=10).text


def test_file_cut_mid_download_is_a_short_read(server: ServerProcess) -> None:
    """The bytes fail after the headers: the client sees fewer bytes than Content-Length."""
    data = b"n\n" + b"".join(b"%d\n" % i for i in range(4_000_000))  # ~30 MB
    file = _upload(server, "shrinks", "big.csv", data)
    path = _stored_path(server, file)
    url = f"{server.url}/api/csv/files/{file['id']}/content"

    async def download() -> tuple[int, int, BaseException | None]:
        received = 0
        async with aiohttp.ClientSession() as client, client.get(url) as resp:
            status = resp.status
            try:
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    if not received:
                        os.truncate(path, 1024 * 1024)  # the server's next reads end early
                    received += len(chunk)
                    await asyncio.sleep(0.001)  # slow, so the server cannot have read it all
            except aiohttp.ClientPayloadError as exc:
                return status, received, exc
        return status, received, None

    status, received, error = asyncio.run(asyncio.wait_for(download(), 30))
    assert status == 200
    assert error is not None, f"the download ended cleanly after {received} bytes"
    assert received < len(data)

    # now the stat sees the cut size: a problem before any header
    assert requests.get(url, timeout=10).status_code == 500


def test_file_missing_in_an_archive_breaks_the_zip(server: ServerProcess, tmp_path: Path) -> None:
    first = b"a\n" + b"x\n" * 100_000
    _upload(server, "zipped", "first.csv", first)
    second = _upload(server, "zipped", "second.csv", b"b\n2\n")
    _stored_path(server, second).unlink()  # opened only once first.csv is in the ZIP
    url = f"{server.url}/api/csv/sessions/zipped/archive"

    async def download() -> tuple[int, bytes, BaseException | None]:
        received = bytearray()
        async with aiohttp.ClientSession() as client, client.get(url) as resp:
            try:
                async for chunk in resp.content.iter_any():
                    received += chunk
            except aiohttp.ClientPayloadError as exc:
                return resp.status, bytes(received), exc
            return resp.status, bytes(received), None

    status, received, error = asyncio.run(asyncio.wait_for(download(), 20))
    assert status == 200  # sent before the missing file was reached
    assert error is not None  # an unterminated chunked body, not a hang
    assert b"HTTP/1.1" not in received
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(received))

    out = tmp_path / "archive.zip"
    code, status_text = _curl(url, out)
    assert status_text == "200"
    assert code == 18  # curl: "transfer closed with outstanding read data remaining"
    assert b"HTTP/1.1" not in out.read_bytes()
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(out)


def test_a_missing_stored_file_is_named_by_rows_tables_and_summary(server: ServerProcess) -> None:
    """As /content: a problem naming the file, never an internal error with a traceback; and
    /tables still lists the session's other tables."""
    logged = len(server.log())
    gone = _upload(server, "partly-gone", "gone.csv", b"a,b\n1,2\n3,4\n")
    kept = _upload(server, "partly-gone", "kept.csv", b"x,y\n5,6\n")
    _stored_path(server, gone).unlink()
    rows = requests.get(f"{server.url}/api/csv/files/{gone['id']}/rows", timeout=10)
    assert rows.status_code == 500
    assert rows.json()["code"] == "stored-file-unavailable"
    assert gone["id"] in rows.json()["detail"]
    tables = requests.get(f"{server.url}/api/csv/sessions/partly-gone/tables", timeout=30)
    assert tables.status_code == 200, tables.text
    by_name = {t["name"]: t for t in tables.json()}
    assert (
        by_name["gone_csv"]["error"] == "table gone_csv cannot be read: its stored file is missing"
    )
    assert by_name["kept_csv"]["error"] is None
    assert by_name["kept_csv"]["file_id"] == kept["id"]
    summary = requests.get(f"{server.url}/api/csv/files/{gone['id']}/summary", timeout=30)
    assert summary.status_code == 422
    assert summary.json()["code"] == "query-unsupported-file"
    assert "Traceback" not in server.log()[logged:]
