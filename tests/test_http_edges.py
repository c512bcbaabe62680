"""Requests that break off, stall or expect something odd, on the small JSON endpoints as on
uploads: a clear 4xx problem, never a 500 in the log or the metrics, never a wait forever."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import requests

from csvstore.config import Settings
from tests.conftest import Client, MakeClient, assert_problem
from tests.serverproc import ServerProcess


async def _raw(
    client: Client, head: str, body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head.encode() + body)
    await writer.drain()
    return reader, writer


def test_a_json_body_dropped_midway_is_the_clients_leaving_not_a_500(tmp_path: Path) -> None:
    """The real server (aiohttp's test server cancels handlers on a lost connection; the
    production server does not, so the read sees the loss)."""
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        ok = requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=10)
        assert ok.status_code == 201
        for path in ("/api/csv/sessions", "/api/csv/sessions/s1/query"):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    'Content-Length: 50\r\n\r\n{"ses'.encode()
                )
                time.sleep(0.2)
        deadline = time.monotonic() + 10
        while True:
            metrics = requests.get(f"{server.url}/metrics", timeout=10).text
            counted = re.findall(
                r'requests_total\{method="POST",route="([^"]+)",status="(\d+)"', metrics
            )
            if len(counted) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sorted(counted) == [
            ("/api/csv/sessions", "201"),
            ("/api/csv/sessions", "400"),
            ("/api/csv/sessions/{session_id}/query", "400"),
        ], metrics
        after = requests.post(
            f"{server.url}/api/csv/sessions", json={"session_id": "s2"}, timeout=10
        )
        assert after.status_code == 201
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "unhandled error" not in log, log
    assert "Traceback" not in log, log
    assert log.count(" 400 ") >= 2, log


async def test_a_stalled_json_body_gets_the_408_of_the_body_read_timeout(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, body_read_timeout=0.5))
    head = (
        "POST /api/csv/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 50\r\n\r\n"
    )
    started = time.monotonic()
    reader, writer = await _raw(client, head, b'{"ses')
    answer = await asyncio.wait_for(reader.read(4096), timeout=10)
    writer.close()
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"application/problem+json" in answer
    assert b"stalled" in answer


async def test_a_json_body_over_64_kib_is_a_413_whether_announced_or_not(client: Client) -> None:
    big = b'{"session_id": "' + b"x" * (70 * 1024) + b'"}'
    resp = await client.post(
        "/api/csv/sessions", data=big, headers={"Content-Type": "application/json"}
    )
    body = await assert_problem(resp, 413)
    assert "65536" in body["detail"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * 10_000
        yield b'{"session_id": "s9"}'

    resp = await client.post(
        "/api/csv/sessions", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await assert_problem(resp, 413)
    resp = await client.get("/api/csv/sessions/s9")
    assert resp.status == 404


async def test_an_unknown_expectation_is_a_417_problem(client: Client) -> None:
    resp = await client.post(
        "/api/csv/sessions", json={"session_id": "s1"}, headers={"Expect": "bogus"}
    )
    body = await assert_problem(resp, 417)
    assert body["code"] == "expectation-failed"
    assert "100-continue" in body["detail"]
    assert (await client.get("/api/csv/sessions/s1")).status == 404
    # 100-continue is met as before
    resp = await client.post(
        "/api/csv/sessions", json={"session_id": "s1"}, headers={"Expect": "100-continue"}
    )
    assert resp.status == 201


async def test_a_body_refused_unread_ends_the_connection(
    make_client: MakeClient, settings: Settings
) -> None:
    """A 413 from Content-Length alone says Connection: close: the client need not send the
    rest, and no byte of it can be taken for a next request."""
    client = await make_client(replace(settings, max_upload_size=1000))
    head = (
        "POST /api/csv/upload HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000000\r\n\r\n"
    )
    reader, writer = await _raw(client, head)
    answer = await asyncio.wait_for(reader.read(4096), timeout=10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"Connection: close" in answer


async def test_a_body_that_does_not_decode_as_its_content_encoding_is_a_400(
    client: Client, session: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp decodes Content-Encoding: gzip bodies; one that is not gzip was a 500 (and
    aiohttp's "Unhandled exception" as it drained the rest) on every endpoint with a body."""
    body = b"\x1f\x8b but not gzip"
    tus = await client.post(
        "/api/csv/tus/",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(body)),
            "Upload-Metadata": "session_id czE=,filename ZC5jc3Y=",  # "s1", "d.csv"
        },
    )
    assert tus.status == 201
    location = tus.headers["Location"]
    heads = [
        "POST /api/csv/sessions HTTP/1.1\r\nContent-Type: application/json\r\n",
        "POST /api/csv/upload HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\n",
        f"PATCH {location} HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        "Content-Type: application/offset+octet-stream\r\n",
    ]
    for head in heads:
        reader, writer = await _raw(
            client,
            f"{head}Host: x\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n",
            body,
        )
        answer = await asyncio.wait_for(reader.read(), timeout=10)  # and the connection ends
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
        assert b"Connection: close" in answer
        assert b"application/problem+json" in answer
        assert b"content-encoding: gzip" in answer.lower()
    offset = await client.head(location, headers={"Tus-Resumable": "1.0.0"})
    assert offset.headers["Upload-Offset"] == "0"
    # Ended, so that no upload is left in progress (on S3, a multipart upload).
    assert (await client.delete(location, headers={"Tus-Resumable": "1.0.0"})).status == 204
    assert (await client.get("/api/csv/sessions/s1")).status == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_content_coding_the_server_cannot_decode_is_a_415_not_stored_encoded(
    client: Client, session: str
) -> None:
    """aiohttp decodes gzip, deflate, br and zstd and passes any other coding through: a
    body sent as ``compress`` or ``x-gzip`` was taken for its decoded bytes (a CSV of
    compressed bytes stored, a session created from them). Now a 415 that names it."""
    csv = b"a,b\n1,2\n"

    def form() -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("session_id", session)
        data.add_field("file", csv, filename="d.csv", content_type="text/csv")
        return data

    for coding in ("compress", "x-gzip", "bogus"):
        upload = await client.post(
            "/api/csv/upload", data=form(), headers={"Content-Encoding": coding}
        )
        problem = await assert_problem(upload, 415)
        assert f"Content-Encoding '{coding}' is not supported" in problem["detail"]
        created = await client.post(
            "/api/csv/sessions",
            data=b'{"session_id": "s2"}',
            headers={"Content-Type": "application/json", "Content-Encoding": coding},
        )
        assert "gzip, deflate, br, zstd" in (await assert_problem(created, 415))["detail"]
    tus = await client.post(
        "/api/csv/tus/",
        data=csv,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(csv)),
            "Upload-Metadata": "session_id czE=,filename ZC5jc3Y=",  # "s1", "d.csv"
            "Content-Type": "application/offset+octet-stream",
            "Content-Encoding": "compress",
        },
    )
    assert "'compress' is not supported" in (await assert_problem(tus, 415))["detail"]
    listed = await (await client.get(f"/api/csv/sessions/{session}")).json()
    assert listed["csv_files"] == []
    assert (await client.get("/api/csv/sessions/s2")).status == 404
    # identity, in any case, is the body as it is.
    plain = await client.post(
        "/api/csv/upload", data=form(), headers={"Content-Encoding": "Identity"}
    )
    assert plain.status == 201, await plain.text()
