"""Probes, metrics, request ids and access logs: what an operator scrapes and reads."""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from csvstore.config import Settings
from csvstore.config_values import RateLimit
from tests.conftest import Client, MakeClient, assert_problem, csv_bytes, upload_form
from tests.serverproc import ServerProcess


async def test_healthz_and_readyz(client: Client) -> None:
    health = await client.get("/healthz")
    assert health.status == 200
    assert (await health.json())["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    assert body["checks"] == {"database": "ok", "storage": "ok", "free_space": "ok"}


@pytest.mark.local_storage
async def test_readyz_fails_below_the_free_space_minimum(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, min_free_space=1 << 60))
    reply = await client.get("/readyz")
    body = await assert_problem(reply, 503)
    assert "free_space below minimum" in body["detail"]
    assert body["checks"] == {"database": "ok", "storage": "ok", "free_space": "below minimum"}
    assert reply.headers["Retry-After"] == "5"
    assert (await client.get("/healthz")).status == 200  # alive all the same


@pytest.mark.local_storage
async def test_readyz_fails_when_uploads_cannot_be_written(
    client: Client, settings: Settings
) -> None:
    """A small upload is written in uploads/ itself: the probe writes there too, not only
    in tmp/ (it answered ready while every upload failed)."""
    aside = settings.uploads_dir.rename(settings.uploads_dir.with_name("uploads-aside"))
    settings.uploads_dir.write_text("in the way")  # nothing can be created under it now
    try:
        body = await assert_problem(await client.get("/readyz"), 503)
        assert body["checks"]["storage"] != "ok", body
        assert body["checks"]["database"] == "ok"
    finally:
        settings.uploads_dir.unlink()
        aside.rename(settings.uploads_dir)
    assert (await client.get("/readyz")).status == 200


async def test_probes_and_metrics_need_no_key(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(replace(settings, api_keys="k" * 20))
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200
    await assert_problem(await client.get("/api/csv/sessions"), 401)


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in:\n{text[:2000]}")


async def test_metrics_count_requests_bytes_and_rejections(client: Client, session: str) -> None:
    data = csv_bytes(100)
    for _ in range(3):
        assert (await client.post("/api/csv/upload", data=upload_form(data))).status == 201
    bad = upload_form(b"\x89PNG\r\n\x1a\n" + bytes(20), filename="x.csv")
    assert (await client.post("/api/csv/upload", data=bad)).status == 400
    ghost = upload_form(data, session_id="ghost")
    assert (await client.post("/api/csv/upload", data=ghost)).status == 404
    files = (await (await client.get(f"/api/csv/sessions/{session}")).json())["csv_files"]
    download = await client.get(f"/api/csv/files/{files[0]['id']}/content")
    assert await download.read() == data

    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    upload_route = {"method": "POST", "route": "/api/csv/upload"}
    assert _sample(text, "csvstore_http_requests_total", status="201", **upload_route) == 3
    assert _sample(text, "csvstore_http_requests_total", status="400", **upload_route) == 1
    assert _sample(text, "csvstore_uploaded_bytes_total") == 3 * len(data)
    assert _sample(text, "csvstore_downloaded_bytes_total") == len(data)
    assert _sample(text, "csvstore_uploads_rejected_total", reason="not_csv") == 1
    assert _sample(text, "csvstore_uploads_rejected_total", reason="unknown_session") == 1
    assert _sample(text, "csvstore_uploads_in_flight") == 0
    assert _sample(text, "csvstore_http_request_duration_seconds_count", **upload_route) == 5
    assert _sample(text, "csvstore_db_operation_duration_seconds_count", kind="write") >= 4
    assert (
        _sample(text, "csvstore_storage_operation_duration_seconds_count", operation="commit") >= 3
    )
    assert not _sample(text, "csvstore_disk_free_bytes") <= 0  # NaN on S3: no disk to watch
    # routes are labelled by their pattern, not by the ids in the path
    assert 'route="/api/csv/sessions/{session_id}"' in text
    assert session not in re.findall(r'route="([^"]*)"', text)


async def test_request_ids_are_echoed_or_made(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="csvstore.access")
    mine = await client.get("/api/csv/sessions", headers={"X-Request-ID": "trace-42"})
    assert mine.headers["X-Request-ID"] == "trace-42"
    made = await client.get("/api/csv/sessions/missing")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    hostile = await client.get("/api/csv/sessions", headers={"X-Request-ID": "a b\tc" * 50})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["X-Request-ID"])
    lines = [r for r in caplog.records if r.name == "csvstore.access"]
    first = lines[0]
    assert "GET /api/csv/sessions 200" in first.getMessage()
    assert "id=trace-42" in first.getMessage()
    assert first.route == "/api/csv/sessions"  # type: ignore[attr-defined]
    assert lines[1].status == 404  # type: ignore[attr-defined]


async def test_every_response_carries_its_request_id(
    client: Client, make_client: MakeClient, tmp_path: Path, session: str
) -> None:
    """Whatever made the response: a handler's return, a streamed body (file content, ZIP
    archive), a file response (the page), a conditional or ranged answer, HEAD, a problem,
    the router or the limiter (a request aiohttp's parser refuses: test_input_validation.py)."""
    tus = {"Tus-Resumable": "1.0.0"}
    data = csv_bytes(500)
    upload = await client.post("/api/csv/upload", data=upload_form(data))
    file_id = (await upload.json())["file"]["id"]
    content = f"/api/csv/files/{file_id}/content"
    etag = (await client.get(content)).headers["ETag"]
    meta = f"session_id {base64.b64encode(session.encode()).decode()},filename dC5jc3Y="
    created = await client.post(
        "/api/csv/tus/", headers={**tus, "Upload-Length": "10", "Upload-Metadata": meta}
    )
    asks: list[tuple[str, str, dict[str, str], int]] = [
        ("GET", "/api/csv/sessions", {}, 200),
        ("GET", content, {}, 200),
        ("HEAD", content, {}, 200),
        ("GET", content, {"If-None-Match": etag}, 304),
        ("GET", content, {"Range": "bytes=0-9"}, 206),
        ("GET", content, {"Range": f"bytes={len(data) + 5}-"}, 416),
        ("GET", f"/api/csv/sessions/{session}/archive", {}, 200),
        ("HEAD", f"/api/csv/sessions/{session}/archive", {}, 200),
        ("GET", f"/api/csv/files/{file_id}/rows", {}, 200),
        ("GET", f"/api/csv/files/{file_id}/rows?limit=-1", {}, 400),
        ("GET", "/api/csv/files/missing/content", {}, 404),
        ("GET", "/", {}, 200),
        ("GET", "/static/app.js", {}, 200),
        ("GET", "/nowhere", {}, 404),
        ("PUT", "/api/csv/sessions", {}, 405),
        ("GET", "/metrics", {}, 200),
        ("GET", "/healthz", {}, 200),
        ("HEAD", created.headers["Location"], tus, 200),
        ("OPTIONS", "/api/csv/tus/", {}, 204),
    ]
    wrong = []
    for n, (method, path, headers, status) in enumerate(asks):
        for asked in ({}, {"X-Request-ID": f"trace-{n}"}):
            reply = await client.request(method, path, headers={**headers, **asked})
            await reply.read()
            assert reply.status == status, (method, path, headers)
            sent = reply.headers.get("X-Request-ID", "")
            if not re.fullmatch(asked.get("X-Request-ID", "[0-9a-f]{32}"), sent):
                wrong.append(f"{method} {path} {status} {asked}: {sent!r}")
    for asked in ({}, {"X-Request-ID": "trace-gone"}):
        other = await client.post(
            "/api/csv/tus/",
            headers={**tus, **asked, "Upload-Length": "10", "Upload-Metadata": meta},
        )
        for reply in (other, await client.delete(other.headers["Location"], headers=tus | asked)):
            sent = reply.headers.get("X-Request-ID", "")
            if not re.fullmatch(asked.get("X-Request-ID", "[0-9a-f]{32}"), sent):
                wrong.append(f"{reply.method} tus {reply.status} {asked}: {sent!r}")
    assert (await client.delete(created.headers["Location"], headers=tus)).status == 204
    assert not wrong, "\n".join(wrong)

    # A store of its own (local, whatever the suite's backend): only the answers matter here.
    limits = Settings(data_dir=tmp_path / "limited", api_keys="k" * 24, rate_limit=RateLimit(1, 60))
    limited = await make_client(limits)
    assert (await limited.get("/api/csv/sessions")).headers["X-Request-ID"]  # 401
    key = {"Authorization": "Bearer " + "k" * 24}
    assert (await limited.get("/api/csv/sessions", headers=key)).status == 200
    refused = await limited.get("/api/csv/sessions", headers=key)
    assert refused.status == 429
    assert refused.headers["X-Request-ID"]


def test_json_logs_and_startup_line(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--log-format", "json")
    server.start()
    try:
        health = requests.get(
            f"{server.url}/healthz", timeout=5, headers={"X-Request-ID": "abc", "User-Agent": "k/1"}
        )
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    startup = next(r for r in records if "starting on" in r["message"])
    assert "durability full" in startup["message"]
    assert "no API keys" in startup["message"]
    access = next(r for r in records if r.get("route") == "/healthz")
    assert access["logger"] == "csvstore.access"
    assert access["request_id"] == "abc"
    assert access["status"] == 200
    assert access["bytes"] == len(health.content)
    assert access["user_agent"] == "k/1"
    # RFC 3339 in UTC, whatever the machine's zone
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", access["time"]), access
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", startup["time"])
