"""Session TTLs and the sweeper that deletes expired sessions with their files."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests

from csvstore.config import Settings
from csvstore.config_values import parse_duration
from tests.conftest import (
    MakeClient,
    assert_consistent,
    assert_problem,
    csv_bytes,
    stored_names,
    stored_state,
    upload_form,
)
from tests.serverproc import ServerProcess


def _parse(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")


async def test_ttl_seconds_sets_expires_at(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/api/csv/sessions", json={"session_id": "t", "ttl_seconds": 3600})
    assert resp.status == 201
    body = await (await client.get("/api/csv/sessions/t")).json()
    lifetime = _parse(body["expires_at"]) - _parse(body["created_at"])
    assert timedelta(seconds=3599) < lifetime < timedelta(seconds=3601)
    for bad in (0, -5, "soon", 1.5, 10**12):
        resp = await client.post("/api/csv/sessions", json={"session_id": "u", "ttl_seconds": bad})
        problem = await assert_problem(resp, 400)
        assert "ttl_seconds" in problem["errors"]


async def test_sweeper_deletes_expired_sessions_and_files(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, sweep_interval=0.05))
    await client.post("/api/csv/sessions", json={"session_id": "brief", "ttl_seconds": 1})
    await client.post("/api/csv/sessions", json={"session_id": "kept"})
    for sid in ("brief", "kept"):
        form = upload_form(csv_bytes(), session_id=sid)
        assert (await client.post("/api/csv/upload", data=form)).status == 201
    assert len(stored_state(settings)[0]) == 2
    for _ in range(100):
        if (await client.get("/api/csv/sessions/brief")).status == 404:
            break
        await asyncio.sleep(0.05)
    await assert_problem(await client.get("/api/csv/sessions/brief"), 404)
    # The session is gone as soon as its rows are; the sweep then removes the bytes and is
    # counted once it has finished.
    for _ in range(100):
        metrics = await (await client.get("/metrics")).text()
        if "csvstore_sessions_expired_total 1.0" in metrics:
            break
        await asyncio.sleep(0.05)
    assert "csvstore_sessions_expired_total 1.0" in metrics
    assert "csvstore_files_expired_total 1.0" in metrics
    kept = await (await client.get("/api/csv/sessions/kept")).json()
    assert len(kept["csv_files"]) == 1
    assert kept["expires_at"] is None
    assert len(stored_state(settings)[0]) == 1
    assert_consistent(settings)


async def test_server_default_ttl(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(replace(settings, session_ttl=86400.0))
    await client.post("/api/csv/sessions", json={"session_id": "d"})
    await client.post("/api/csv/sessions", json={"session_id": "own", "ttl_seconds": 60})
    default = await (await client.get("/api/csv/sessions/d")).json()
    assert _parse(default["expires_at"]) - _parse(default["created_at"]) == timedelta(days=1)
    own = await (await client.get("/api/csv/sessions/own")).json()
    assert _parse(own["expires_at"]) - _parse(own["created_at"]) == timedelta(seconds=60)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_short_ttl_against_the_real_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--session-ttl", "1", "--sweep-interval", "0.2")
    server.start()
    try:
        assert (
            requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "x"}).status_code
            == 201
        )
        files = {"file": ("a.csv", b"a,b\n1,2\n")}
        up = requests.post(f"{server.url}/api/csv/upload", files=files, data={"session_id": "x"})
        assert up.status_code == 201
        deadline = time.monotonic() + 10
        while requests.get(f"{server.url}/api/csv/sessions/x").status_code != 404:
            assert time.monotonic() < deadline, "the session never expired"
            time.sleep(0.1)
        file_id = up.json()["file"]["id"]
        assert requests.get(f"{server.url}/api/csv/files/{file_id}").status_code == 404
    finally:
        assert server.stop() == 0
    assert stored_names(tmp_path / "data" / "uploads") == []


async def test_an_expired_session_takes_its_resumable_uploads_with_it(
    make_client: MakeClient, settings: Settings
) -> None:
    """The retention sweep deletes a session as DELETE does: its tus uploads in progress go
    too (before, they stayed until their own expiry, 24 h)."""
    from tests import s3util

    client = await make_client(replace(settings, sweep_interval=0.05))
    await client.post("/api/csv/sessions", json={"session_id": "brief", "ttl_seconds": 1})
    body = csv_bytes(2000)
    meta = "session_id YnJpZWY=,filename YS5jc3Y="  # brief, a.csv
    tus = {"Tus-Resumable": "1.0.0"}
    created = await client.post(
        "/api/csv/tus/", headers={**tus, "Upload-Length": str(len(body)), "Upload-Metadata": meta}
    )
    assert created.status == 201, await created.text()
    location = created.headers["Location"]
    sent = await client.patch(
        location,
        data=body[:1000],
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert sent.status == 204, await sent.text()

    def partials_left() -> list[str]:
        if settings.uses_s3:
            objects, uploads = s3util.listing(settings)
            return sorted(n for n in objects if n.startswith("tus/")) + uploads
        folder = settings.temp_dir / "tus"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    assert partials_left()
    for _ in range(100):
        if (await client.get("/api/csv/sessions/brief")).status == 404:
            break
        await asyncio.sleep(0.05)
    for _ in range(40):  # the sweep removes the uploads just after the session
        if not partials_left():
            break
        await asyncio.sleep(0.05)
    assert partials_left() == []
    assert (await client.head(location, headers=tus)).status == 404
