"""Error codes: every error has a status and a reason of its own, problem documents carry
it as ``code`` and ``type``, and the metrics count tus uploads by it like form uploads."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from dataclasses import replace

from csvstore.config import Settings
from csvstore.errors import CsvstoreError, error_classes
from csvstore.web.problems import all_reasons
from tests.conftest import Client, MakeClient, assert_problem, csv_bytes, upload_form

TUS = "/api/csv/tus/"
V = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"
KEBAB = re.compile(r"[a-z]+(-[a-z]+)*")


def test_every_error_class_has_a_status_and_a_reason_of_its_own() -> None:
    classes = error_classes()
    assert len(classes) >= 20
    reasons = [cls.reason for cls in classes]
    assert len(set(reasons)) == len(reasons), sorted(reasons)
    for cls in classes:
        assert issubclass(cls, CsvstoreError)
        assert KEBAB.fullmatch(cls.reason), cls
        assert 400 <= cls.status <= 599, cls
    assert set(reasons) <= set(all_reasons())
    assert {"not-found", "method-not-allowed", "internal-error"} <= set(all_reasons())


async def _code(resp: object, status: int) -> str:
    body = await assert_problem(resp, status)  # type: ignore[arg-type]
    assert body["type"] == f"urn:csvstore:problem:{body['code']}"
    return str(body["code"])


def _tus_headers(length: int, session_id: str = "s1", **extra: str) -> dict[str, str]:
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"session_id": session_id, "filename": "data.csv"}.items()
    )
    return {**V, "Upload-Length": str(length), "Upload-Metadata": meta, **extra}


async def test_problems_name_what_was_wrong(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(replace(settings, max_upload_size=1000))
    sessions = "/api/csv/sessions"
    assert (await client.post(sessions, json={"session_id": "s1"})).status == 201
    # Both 400: only the code tells a duplicate from an invalid id.
    assert await _code(await client.post(sessions, json={"session_id": "s1"}), 400) == (
        "session-exists"
    )
    assert await _code(await client.post(sessions, json={"session_id": ".x"}), 400) == (
        "validation-failed"
    )
    assert await _code(await client.get(f"{sessions}/nobody"), 404) == "unknown-session"
    png = upload_form(b"\x89PNG\r\n\x1a\n" + bytes(20), filename="x.csv")
    assert await _code(await client.post("/api/csv/upload", data=png), 400) == "not-csv"
    big = upload_form(csv_bytes(200))
    assert await _code(await client.post("/api/csv/upload", data=big), 413) == "too-large"
    assert await _code(await client.get("/api/csv/nothing"), 404) == "not-found"
    # A file the page does not have: was an empty application/octet-stream 404.
    for path in ("/static/x.js", "/static/.hidden", "/static/", "/static/../page.py"):
        assert await _code(await client.get(path), 404) == "not-found", path
    assert (await client.head("/static/app.js")).status == 200
    # A JSON body over the app's limit: the answer says which limit, not just the status.
    huge = await client.post(sessions, json={"session_id": "x" * 100_000})
    body = await assert_problem(huge, 413)
    assert body["code"] == "too-large"
    assert "65536 bytes" in body["detail"], body
    assert await _code(await client.put(sessions), 405) == "method-not-allowed"

    created = await client.post(TUS, headers=_tus_headers(len(csv_bytes())))
    assert created.status == 201
    headers = {**V, "Upload-Offset": "5", "Content-Type": OFFSET_STREAM}
    conflict = await client.patch(created.headers["Location"], data=b"x", headers=headers)
    assert await _code(conflict, 409) == "offset-conflict"
    assert conflict.headers["Upload-Offset"] == "0"
    # Ended as a client would: on S3 an open tus upload is a multipart upload in progress,
    # which the fixture's check of leftovers would rightly report.
    assert (await client.delete(created.headers["Location"], headers=V)).status == 204


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _metrics(client: Client) -> str:
    return await (await client.get("/metrics")).text()


async def test_tus_uploads_count_as_uploads(client: Client, session: str) -> None:
    data = csv_bytes(50)
    # creation-with-upload, the whole file at once
    headers = _tus_headers(len(data), **{"Content-Type": OFFSET_STREAM})
    assert (await client.post(TUS, data=data, headers=headers)).status == 201
    # creation, then a PATCH whose body arrives while /metrics is asked
    created = await client.post(TUS, headers=_tus_headers(len(data)))
    assert created.status == 201
    release = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield data[:10]
        await release.wait()
        yield data[10:]

    patch_headers = {**V, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM}
    patching = asyncio.ensure_future(
        client.patch(created.headers["Location"], data=body(), headers=patch_headers)
    )
    try:
        async with asyncio.timeout(10):
            while _sample(await _metrics(client), "csvstore_uploads_in_flight") != 1:
                await asyncio.sleep(0.02)
    finally:
        release.set()
    assert (await patching).status == 204
    # refused: a PATCH at the wrong offset, a creation into no session
    again = await client.patch(created.headers["Location"], data=b"x", headers=patch_headers)
    assert again.status == 409
    ghost = await client.post(TUS, headers=_tus_headers(len(data), session_id="ghost"))
    assert ghost.status == 404

    text = await _metrics(client)
    assert _sample(text, "csvstore_uploaded_bytes_total") == 2 * len(data)
    assert _sample(text, "csvstore_uploads_in_flight") == 0
    assert _sample(text, "csvstore_uploads_rejected_total", reason="offset_conflict") == 1
    assert _sample(text, "csvstore_uploads_rejected_total", reason="unknown_session") == 1
    # HEAD and termination are not uploads
    assert (await client.head(created.headers["Location"], headers=V)).status == 200
    text = await _metrics(client)
    assert _sample(text, "csvstore_uploads_rejected_total", reason="unknown_session") == 1


async def test_a_tus_creation_at_the_bare_root_counts_as_an_upload(
    client: Client, session: str
) -> None:
    data = csv_bytes(20)
    headers = _tus_headers(len(data), **{"Content-Type": OFFSET_STREAM})
    assert (await client.post(TUS.rstrip("/"), data=data, headers=headers)).status == 201
    assert _sample(await _metrics(client), "csvstore_uploaded_bytes_total") == len(data)
