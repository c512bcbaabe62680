"""Input that used to slip through or end in a 500: ids matched in full, ASCII digits in
numeric headers, NUL bytes (PostgreSQL refuses them), refused tus creations that left their
bytes, the page's content policy, relative URLs, and aiohttp's own protocol errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from csvstore.config import Settings
from tests import s3util
from tests.conftest import Client, assert_problem, csv_bytes, upload_form
from tests.serverproc import ServerProcess

TUS = "/api/csv/tus/"
V = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def _tus_headers(length: int, session_id: str = "s1", **extra: str) -> dict[str, str]:
    meta = _metadata(session_id=session_id, filename="data.csv")
    return {**V, "Upload-Length": str(length), "Upload-Metadata": meta, **extra}


# Ids matched in full


async def test_a_session_id_with_a_trailing_newline_is_refused_by_every_door(
    client: Client, session: str
) -> None:
    resp = await client.post("/api/csv/sessions", json={"session_id": "s2\n"})
    assert (await assert_problem(resp, 400))["errors"]["session_id"]
    resp = await client.post(TUS, headers=_tus_headers(10, session_id=f"{session}\n"))
    assert "session_id" in (await assert_problem(resp, 400))["errors"]
    resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes(), session_id="s1\n"))
    assert "session_id" in (await assert_problem(resp, 400))["errors"]
    # The checksum field too: 64 hex digits and nothing after them.
    form = upload_form(csv_bytes(), session_id=session)
    form.add_field("sha256", hashlib.sha256(csv_bytes()).hexdigest() + "\n")
    resp = await client.post("/api/csv/upload", data=form)
    assert "64 hex digits" in str((await assert_problem(resp, 400))["errors"])
    listed = await (await client.get("/api/csv/sessions")).json()
    assert [s["session_id"] for s in listed] == [session]


# ASCII digits in numeric headers


async def test_numeric_headers_take_ascii_digits_only(client: Client, session: str) -> None:
    for digits in ("²", "١٢", "1²"):  # str.isdigit accepts each; int() refuses the first two
        resp = await client.post(TUS, headers=_tus_headers(10, **{"Upload-Length": digits}))
        assert "Upload-Length" in (await assert_problem(resp, 400))["detail"]
    resp = await client.post(TUS, headers=_tus_headers(len(csv_bytes())))
    assert resp.status == 201
    location = resp.headers["Location"]
    for digits in ("²", "١٢"):
        headers = {**V, "Upload-Offset": digits, "Content-Type": OFFSET_STREAM}
        resp = await client.patch(location, data=csv_bytes(), headers=headers)
        assert "Upload-Offset" in (await assert_problem(resp, 400))["detail"]
    assert (await client.delete(location, headers=V)).status == 204
    # Range: not a range this server reads, so the whole file (as for any other such header).
    resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes(), session_id=session))
    file_id = (await resp.json())["file"]["id"]
    resp = await client.get(f"/api/csv/files/{file_id}/content", headers={"Range": "bytes=²-"})
    assert resp.status == 200
    assert await resp.read() == csv_bytes()


# A NUL byte where an id or the cursor goes (a 500 on PostgreSQL; make test-postgres)


async def test_a_nul_byte_in_an_id_or_the_cursor_is_a_404_or_a_400(
    client: Client, session: str
) -> None:
    for method, path in [
        ("GET", "/api/csv/sessions/s1%00"),
        ("DELETE", "/api/csv/sessions/s%00x"),
        ("GET", "/api/csv/sessions/s1%00/archive"),
        ("GET", "/api/csv/files/x%00y"),
        ("GET", "/api/csv/files/x%00y/content"),
        ("GET", "/api/csv/files/x%00y/rows"),
        ("DELETE", "/api/csv/files/%00"),
    ]:
        resp = await client.request(method, path)
        assert "not found" in (await assert_problem(resp, 404))["detail"], path
    resp = await client.get("/api/csv/sessions?after=s%00")
    assert "NUL" in str((await assert_problem(resp, 400))["errors"]["after"])
    assert (await client.get(f"/api/csv/sessions/{session}")).status == 200  # still there


# A refused creation-with-upload leaves nothing (local folder or, make test-s3, the bucket)


def _tus_leftovers(settings: Settings) -> list[str]:
    if settings.uses_s3:
        objects, uploads = s3util.listing(settings)
        return sorted(name for name in objects if name.startswith("tus/")) + uploads
    folder = settings.temp_dir / "tus"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_a_refused_creation_with_upload_leaves_nothing(
    client: Client, session: str, settings: Settings
) -> None:
    body = csv_bytes()
    # 413: the body goes past Upload-Length.
    headers = _tus_headers(len(body) - 5, **{"Content-Type": OFFSET_STREAM})
    resp = await client.post(TUS, data=body, headers=headers)
    await assert_problem(resp, 413)
    assert "Location" not in resp.headers
    # 460: the body does not match its checksum.
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    headers = _tus_headers(
        len(body), **{"Content-Type": OFFSET_STREAM, "Upload-Checksum": f"sha256 {wrong}"}
    )
    resp = await client.post(TUS, data=body, headers=headers)
    await assert_problem(resp, 460)
    assert "Location" not in resp.headers
    assert _tus_leftovers(settings) == []
    # An accepted creation with the first bytes keeps them: its client has a Location.
    headers = _tus_headers(len(body), **{"Content-Type": OFFSET_STREAM})
    resp = await client.post(TUS, data=body[:5], headers=headers)
    assert resp.status == 201, await resp.text()
    assert _tus_leftovers(settings) != []
    assert (await client.delete(resp.headers["Location"], headers=V)).status == 204
    assert _tus_leftovers(settings) == []


async def test_upload_metadata_that_is_not_utf8_is_a_400_and_leaves_nothing(
    client: Client, session: str, settings: Settings
) -> None:
    """A key of raw bytes (aiohttp keeps them as surrogates): was a 500 from the state's
    JSON encoder, with the data file and a torn state left in the temp folder."""
    assert client.server.port is not None
    meta = _metadata(session_id=session, filename="data.csv").encode() + b",k\xffey"
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"POST /api/csv/tus/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        b"Upload-Length: 8\r\nUpload-Metadata: " + meta + b"\r\nConnection: close\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"application/problem+json" in head
    assert b"Upload-Metadata" in body
    assert _tus_leftovers(settings) == []


# The page's content policy


async def test_no_inline_script_or_style_outside_the_api_docs(client: Client) -> None:
    for path in ("/", "/static/app.js", "/static/style.css", "/healthz", "/no-such-page"):
        policy = (await client.get(path)).headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in policy, path
        assert "script-src 'self';" in policy or "default-src 'none'" in policy, path
    docs = await client.get("/docs")
    assert docs.status == 200
    assert "'unsafe-inline'" in docs.headers["Content-Security-Policy"]  # Swagger UI's own
    api = await client.get("/api/csv/sessions")
    assert api.headers["Content-Security-Policy"].startswith("default-src 'none'")


# Every URL the server emits is relative: never built from Host


async def test_emitted_urls_are_relative_whatever_the_host_header(
    client: Client, session: str
) -> None:
    elsewhere = {"Host": "attacker.example:8443", "X-Forwarded-Proto": "https"}
    resp = await client.post("/api/csv/sessions", json={"session_id": "s2"}, headers=elsewhere)
    assert resp.headers["Location"] == "/api/csv/sessions/s2"
    resp = await client.get("/api/csv/sessions?limit=1", headers=elsewhere)
    assert resp.headers["Link"] == '</api/csv/sessions?limit=1&after=s1>; rel="next"'
    form = upload_form(csv_bytes(), session_id=session)
    resp = await client.post("/api/csv/upload", data=form, headers=elsewhere)
    assert resp.headers["Location"].startswith("/api/csv/files/")
    resp = await client.post(TUS, headers={**_tus_headers(4), **elsewhere})
    assert resp.headers["Location"].startswith(TUS)
    patched = await client.patch(
        resp.headers["Location"],
        data=b"a,b\n",
        headers={**V, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM, **elsewhere},
    )
    assert patched.status == 204, await patched.text()
    assert patched.headers["Content-Location"].startswith("/api/csv/files/")
    assert (await client.delete(resp.headers["Location"], headers=V)).status == 204


# aiohttp's own protocol errors: logged, never echoed (the real server process)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _raw(server: ServerProcess, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/csv/sessions HTTP/1.1\r\nHost: x\r\nEcho<me>Header: 1\r\n\r\n",
        b"GET /api/csv/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: echo<me>\r\n\r\n",
        b"GET /api/csv/sessions HTTP/9.echo<me>\r\nHost: x\r\n\r\n",
        b"GET<echo<me> /api/csv/sessions HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/csv/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: echo<me>\r\n\r\n",
    ],
    ids=["header-name", "content-length", "version", "method", "transfer-encoding"],
)
def test_protocol_errors_are_logged_not_echoed(server: ServerProcess, request_bytes: bytes) -> None:
    answer = _raw(server, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", answer
    assert b"echo" not in answer.lower(), answer
    assert b"<me>" not in answer, answer
    assert b"content-type: application/problem+json" in head.lower(), answer
    assert b'"status":400' in body
    assert b"x-content-type-options: nosniff" in head.lower(), answer
    assert re.search(rb"(?mi)^x-request-id: [0-9a-f]{32}\r?$", head), answer
    server.stop()
    # What was wrong is in the log (aiohttp's message quotes the bytes where it has them).
    logged = [line for line in server.log().splitlines() if "malformed request" in line]
    assert logged, server.log()[-2000:]
    assert "refused: 400, message:" in logged[0], logged
