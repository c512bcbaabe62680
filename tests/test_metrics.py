"""What /metrics and the access log tell: every upload path, tus events, streamed bodies,
and one scrape summing every worker of a --workers 2 server."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import re
import signal
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from csvstore import __version__
from csvstore.config import Settings
from csvstore.web.keys import INFLIGHT_KEY
from csvstore.web.tus import ENGINE_KEY
from tests.conftest import Client, MakeClient, csv_bytes, upload_form
from tests.serverproc import ServerProcess

TUS = "/api/csv/tus/"
V = {"Tus-Resumable": "1.0.0"}
CREATED = re.compile(r"^\w+_created[{ ]", re.MULTILINE)  # a counter's creation time
PATCH = {**V, "Content-Type": "application/offset+octet-stream"}


def _meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if re.split(r"[{ ]", line, maxsplit=1)[0] == name and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in:\n{text[:3000]}")


async def _scrape(client: Client) -> str:
    reply = await client.get("/metrics")
    assert reply.status == 200
    return await reply.text()


async def test_tus_counters_and_uploaded_bytes(client: Client, session: str) -> None:
    data = csv_bytes(200)
    headers = {**V, "Upload-Length": str(len(data))}
    meta = _meta(session_id=session, filename="t.csv")
    created = await client.post(TUS, headers={**headers, "Upload-Metadata": meta})
    assert created.status == 201
    url = created.headers["Location"]
    half = len(data) // 2
    first = await client.patch(url, data=data[:half], headers={**PATCH, "Upload-Offset": "0"})
    assert first.status == 204
    stale = await client.patch(url, data=data[half:], headers={**PATCH, "Upload-Offset": "1"})
    assert stale.status == 409
    rest = await client.patch(url, data=data[half:], headers={**PATCH, "Upload-Offset": str(half)})
    assert rest.status == 204
    gone = await client.post(TUS, headers={**headers, "Upload-Metadata": meta})
    assert (await client.delete(gone.headers["Location"], headers=V)).status == 204
    # and one multipart upload beside them
    assert (await client.post("/api/csv/upload", data=upload_form(data))).status == 201

    text = await _scrape(client)
    assert sample(text, "csvstore_tus_uploads_created_total") == 2
    assert sample(text, "csvstore_tus_uploads_finished_total") == 1
    assert sample(text, "csvstore_tus_uploads_terminated_total") == 1
    assert sample(text, "csvstore_tus_uploads_expired_total") == 0
    assert sample(text, "csvstore_tus_received_bytes_total") == len(data)
    assert sample(text, "csvstore_tus_patches_total", outcome="partial") == 1
    assert sample(text, "csvstore_tus_patches_total", outcome="completed") == 1
    assert sample(text, "csvstore_tus_patches_total", outcome="offset_conflict") == 1
    assert sample(text, "csvstore_uploaded_bytes_total") == 2 * len(data)  # tus + multipart


async def test_only_unfinished_uploads_count_as_expired(
    make_client: MakeClient, settings: Settings
) -> None:
    """A finished upload's record, kept for HEAD until it expires, is cleared by the same
    sweep; that is not an upload that expired."""
    client = await make_client(replace(settings, tus_expiry=1.0, sweep_interval=0.2))
    assert (await client.post("/api/csv/sessions", json={"session_id": "s"})).status == 201
    data = csv_bytes(20)
    urls = []
    for name in ("done.csv", "left.csv"):
        headers = {
            **V,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": _meta(session_id="s", filename=name),
        }
        created = await client.post(TUS, headers=headers)
        assert created.status == 201
        urls.append(created.headers["Location"])
    done = await client.patch(urls[0], data=data, headers={**PATCH, "Upload-Offset": "0"})
    assert done.status == 204
    left = await client.patch(urls[1], data=data[:5], headers={**PATCH, "Upload-Offset": "0"})
    assert left.status == 204
    partials = client.app[ENGINE_KEY].require()
    ids = [url.rstrip("/").rsplit("/", 1)[1] for url in urls]
    deadline = time.monotonic() + 20
    while any([await partials.get(i) for i in ids]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not any([await partials.get(i) for i in ids]), "the sweep left a record"
    await asyncio.sleep(0.5)  # a few more sweeps: nothing more to count
    assert sample(await _scrape(client), "csvstore_tus_uploads_expired_total") == 1
    listed = await (await client.get("/api/csv/sessions/s")).json()
    assert [f["original_filename"] for f in listed["csv_files"]] == ["done.csv"]


async def test_no_created_series_and_process_and_build_info(client: Client) -> None:
    text = await _scrape(client)
    assert not CREATED.search(text)
    assert sample(text, "csvstore_build_info", version=__version__) == 1
    assert sample(text, "process_resident_memory_bytes") > 0
    assert sample(text, "process_open_fds") > 0
    assert sample(text, "python_info", implementation="CPython") == 1


async def _access_lines(caplog: pytest.LogCaptureFixture, path: str) -> list[logging.LogRecord]:
    """The line is written once the body is sent, which may be just after the client has
    read it all."""
    for _ in range(100):
        lines = [r for r in caplog.records if r.name == "csvstore.access" and r.path == path]  # type: ignore[attr-defined]
        if lines:
            return lines
        await asyncio.sleep(0.01)
    return []


async def test_streamed_bodies_are_logged_and_counted_as_sent(
    client: Client, session: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An archive (chunked, no length before it is sent), the page (a file response sent
    after the handler returns) and a file's content: the line's bytes are those received."""
    caplog.set_level(logging.INFO, logger="csvstore.access")
    data = csv_bytes(3000)
    for name in ("a.csv", "b.csv"):
        form = upload_form(data, filename=name)
        assert (await client.post("/api/csv/upload", data=form)).status == 201
    archive_path = f"/api/csv/sessions/{session}/archive"
    archive = await client.get(archive_path, headers={"User-Agent": "probe/1.0 (metrics test)"})
    assert archive.status == 200
    received = await archive.read()
    assert zipfile.ZipFile(io.BytesIO(received)).namelist()
    page = await client.get("/")
    page_body = await page.read()
    assert page.status == 200
    assert page_body

    (line,) = await _access_lines(caplog, archive_path)
    assert line.bytes == len(received)  # type: ignore[attr-defined]
    assert line.user_agent == "probe/1.0 (metrics test)"  # type: ignore[attr-defined]
    message = line.getMessage()
    assert f" 200 {len(received)}B " in message
    assert message.endswith(" ua=probe/1.0 (metrics test)")
    (page_line,) = await _access_lines(caplog, "/")
    assert page_line.bytes == len(page_body)  # type: ignore[attr-defined]

    text = await _scrape(client)
    assert sample(text, "csvstore_downloaded_bytes_total") == len(received)


def test_a_scrape_sums_every_worker(tmp_path: Path) -> None:
    """Uploads on fresh connections until both workers of a --workers 2 server have taken
    some (a made request id starts with its worker's prefix); then every scrape, whichever
    worker answers it, counts all of them. One worker is then killed: what it counted stays."""
    server = ServerProcess(tmp_path / "data", "--workers", "2")
    server.start()
    try:
        assert (
            requests.post(
                f"{server.url}/api/csv/sessions", json={"session_id": "s"}, timeout=10
            ).status_code
            == 201
        )
        data = csv_bytes(50)
        by_worker: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while (len(by_worker) < 2 or sum(by_worker.values()) < 6) and time.monotonic() < deadline:
            n = sum(by_worker.values())
            reply = requests.post(
                f"{server.url}/api/csv/upload",
                files={"file": (f"f{n}.csv", data, "text/csv")},
                data={"session_id": "s"},
                headers={"Connection": "close"},
                timeout=10,
            )
            assert reply.status_code == 201, reply.text
            prefix = reply.headers["X-Request-ID"][:16]
            by_worker[prefix] = by_worker.get(prefix, 0) + 1
        assert len(by_worker) == 2, by_worker
        uploads = sum(by_worker.values())

        def scrape() -> str:
            reply = requests.get(
                f"{server.url}/metrics", headers={"Connection": "close"}, timeout=10
            )
            assert reply.status_code == 200
            return reply.text

        for _ in range(6):  # fresh connections: both workers answer some of these
            text = scrape()
            route = {"method": "POST", "route": "/api/csv/upload", "status": "201"}
            assert sample(text, "csvstore_http_requests_total", **route) == uploads
            assert sample(text, "csvstore_uploaded_bytes_total") == uploads * len(data)
            assert sample(text, "csvstore_uploads_in_flight") == 0
            assert not CREATED.search(text)
            assert sample(text, "csvstore_build_info", version=__version__) == 1
            assert sample(text, "process_resident_memory_bytes") > 0  # the answering worker's

        assert server.proc is not None
        workers = (
            Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
        )
        assert len(workers) == 2
        os.kill(int(workers[0]), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while "in place of the one that died" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        for _ in range(4):
            text = scrape()
            assert sample(text, "csvstore_uploaded_bytes_total") == uploads * len(data)
            assert sample(text, "csvstore_worker_restarts_total") == 1
        assert (tmp_path / "data" / "tmp" / "metrics").is_dir()
    finally:
        assert server.stop() == 0
    assert not re.search(r"Traceback", server.log()), server.log()
    assert not (tmp_path / "data" / "tmp" / "metrics").exists()  # no figures outlive it


async def test_request_counts_per_status_and_in_flight_after_errors(
    client: Client, session: str
) -> None:
    """The labelled children are kept per (method, route, status): one route's statuses
    count on series of their own, every time; a refused request leaves nothing in flight."""
    before = await _scrape(client)
    route = {"method": "POST", "route": "/api/csv/upload"}
    for _ in range(3):
        bad = await client.post("/api/csv/upload", data=b"x", headers={"Content-Type": "text/csv"})
        assert bad.status == 400
        assert bad.headers["Content-Type"].startswith("application/problem+json")
        assert bad.headers["X-Request-ID"]
    for _ in range(2):
        form = upload_form(csv_bytes(5), session_id=session)
        assert (await client.post("/api/csv/upload", data=form)).status == 201
    after = await _scrape(client)

    def grown(name: str, **labels: str) -> float:
        try:
            was = sample(before, name, **labels)
        except AssertionError:
            was = 0.0
        return sample(after, name, **labels) - was

    assert grown("csvstore_http_requests_total", **route, status="400") == 3
    assert grown("csvstore_http_requests_total", **route, status="201") == 2
    assert grown("csvstore_http_request_duration_seconds_count", **route) == 5
    assert grown("csvstore_uploads_rejected_total", reason="bad_request") == 3
    assert client.app is not None
    assert client.app[INFLIGHT_KEY].count == 0
