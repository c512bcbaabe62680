"""Integrity (digests, dedupe) and files coming back out: content, ranges, archives."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile

import pytest
from aiohttp import FormData

from csvstore.config import Settings
from tests.conftest import (
    Client,
    assert_consistent,
    assert_problem,
    csv_bytes,
    raw_multipart,
    stored_state,
    upload_form,
)

BODY = b"id,name\n1,alice\n2,bob\n3,carol\n"
SHA = hashlib.sha256(BODY).hexdigest()


async def _upload(client: Client, data: bytes = BODY, **fields: str) -> dict[str, object]:
    form = upload_form(data)
    for name, value in fields.items():
        form.add_field(name, value)
    resp = await client.post("/api/csv/upload", data=form)
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_sha256_and_encoding_are_recorded(client: Client, session: str) -> None:
    file = (await _upload(client))["file"]
    assert isinstance(file, dict)
    assert file["sha256"] == SHA
    assert file["encoding"] == "utf-8"


@pytest.mark.parametrize("before_file", [True, False])
async def test_matching_digest_field_is_accepted(
    client: Client, session: str, before_file: bool
) -> None:
    form = FormData()
    if before_file:
        form.add_field("sha256", SHA.upper())
    form.add_field("session_id", session)
    form.add_field("file", BODY, filename="x.csv", content_type="text/csv")
    if not before_file:
        form.add_field("sha256", SHA)
    assert (await client.post("/api/csv/upload", data=form)).status == 201


@pytest.mark.parametrize("before_file", [True, False])
async def test_digest_mismatch_names_both_and_stores_nothing(
    client: Client, session: str, settings: Settings, before_file: bool
) -> None:
    wrong = "0" * 64
    form = FormData()
    if before_file:
        form.add_field("sha256", wrong)
    form.add_field("session_id", session)
    form.add_field("file", BODY, filename="x.csv", content_type="text/csv")
    if not before_file:
        form.add_field("sha256", wrong)
    body = await assert_problem(await client.post("/api/csv/upload", data=form), 400)
    assert wrong in body["detail"]
    assert SHA in body["detail"]
    assert stored_state(settings) == (set(), set(), [])


async def test_content_digest_header(client: Client, session: str, settings: Settings) -> None:
    good = "sha-256=:" + base64.b64encode(hashlib.sha256(BODY).digest()).decode() + ":"
    bad = "sha-256=:" + base64.b64encode(hashlib.sha256(b"other").digest()).decode() + ":"

    def body_with(header: str) -> tuple[bytes, dict[str, str]]:
        return raw_multipart(
            ('form-data; name="session_id"', session.encode()),
            (f'form-data; name="file"; filename="x.csv"\r\nContent-Digest: {header}', BODY),
        )

    data, headers = body_with(good)
    assert (await client.post("/api/csv/upload", data=data, headers=headers)).status == 201
    data, headers = body_with(f"sha-512=:AAAA:, {good}")  # other algorithms are ignored
    assert (await client.post("/api/csv/upload", data=data, headers=headers)).status == 201
    data, headers = body_with(bad)
    problem = await assert_problem(
        await client.post("/api/csv/upload", data=data, headers=headers), 400
    )
    assert "Content-Digest" in problem["detail"]
    assert SHA in problem["detail"]
    for malformed in ("sha-256=abc", "sha-256=:!!!:", "sha-256=:AAAA:"):
        data, headers = body_with(malformed)
        problem = await assert_problem(
            await client.post("/api/csv/upload", data=data, headers=headers), 400
        )
        assert "malformed" in problem["detail"]
    on_disk, listed, temps = stored_state(settings)
    assert len(on_disk) == len(listed) == 2
    assert temps == []


async def test_malformed_digest_field_is_400(client: Client, session: str) -> None:
    form = upload_form(BODY)
    form.add_field("sha256", "not-hex")
    body = await assert_problem(await client.post("/api/csv/upload", data=form), 400)
    assert "sha256" in body["errors"]


async def test_dedupe(client: Client, session: str, settings: Settings) -> None:
    first = (await _upload(client, dedupe="true"))["file"]
    assert isinstance(first, dict)
    assert "duplicate_of" not in first
    form = upload_form(BODY)
    form.add_field("dedupe", "true")
    resp = await client.post("/api/csv/upload", data=form)
    assert resp.status == 200
    again = await resp.json()
    assert again["file"]["id"] == first["id"]
    assert again["file"]["duplicate_of"] == first["id"]
    # without dedupe the original behaviour holds: both stored
    third = (await _upload(client))["file"]
    assert isinstance(third, dict)
    assert third["id"] != first["id"]
    files = (await (await client.get(f"/api/csv/sessions/{session}")).json())["csv_files"]
    assert len(files) == 2
    # another session does not dedupe against this one
    await client.post("/api/csv/sessions", json={"session_id": "other"})
    form = upload_form(BODY, session_id="other")
    form.add_field("dedupe", "true")
    assert (await client.post("/api/csv/upload", data=form)).status == 201
    assert_consistent(settings)


async def test_content_download_headers(client: Client, session: str) -> None:
    name = "résumé données.csv"
    resp = await client.post("/api/csv/upload", data=upload_form(BODY, filename=name))
    file = (await resp.json())["file"]
    url = f"/api/csv/files/{file['id']}/content"

    full = await client.get(url)
    assert full.status == 200
    assert await full.read() == BODY
    assert full.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert full.headers["ETag"] == f'"{SHA}"'
    assert full.headers["Accept-Ranges"] == "bytes"
    disposition = full.headers["Content-Disposition"]
    assert disposition.startswith("attachment; filename=")
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20donn%C3%A9es.csv" in disposition
    assert "\r" not in disposition

    not_modified = await client.get(url, headers={"If-None-Match": f'"{SHA}"'})
    assert not_modified.status == 304
    assert await not_modified.read() == b""
    changed = await client.get(url, headers={"If-None-Match": '"something-else"'})
    assert changed.status == 200

    head = await client.head(url)
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(BODY))
    assert await head.read() == b""


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-1", 0, 1),
        ("bytes=3-", 3, len(BODY) - 1),
        ("bytes=-5", len(BODY) - 5, len(BODY) - 1),
        ("bytes=10-100000", 10, len(BODY) - 1),
    ],
)
async def test_ranges(client: Client, session: str, header: str, start: int, end: int) -> None:
    file = (await _upload(client))["file"]
    assert isinstance(file, dict)
    resp = await client.get(f"/api/csv/files/{file['id']}/content", headers={"Range": header})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(BODY)}"
    assert await resp.read() == BODY[start : end + 1]


async def test_unsatisfiable_and_ignored_ranges(client: Client, session: str) -> None:
    file = (await _upload(client))["file"]
    assert isinstance(file, dict)
    url = f"/api/csv/files/{file['id']}/content"
    for header in (f"bytes={len(BODY)}-", "bytes=-0", "bytes=9-3"):
        resp = await client.get(url, headers={"Range": header})
        await assert_problem(resp, 416)
        assert resp.headers["Content-Range"] == f"bytes */{len(BODY)}"
    for header in ("bytes=0-1,3-4", "items=0-1", "bytes=x-y"):  # answered with the whole file
        resp = await client.get(url, headers={"Range": header})
        assert resp.status == 200
        assert await resp.read() == BODY
    stale = await client.get(url, headers={"Range": "bytes=0-1", "If-Range": '"old"'})
    assert stale.status == 200
    fresh = await client.get(url, headers={"Range": "bytes=0-1", "If-Range": f'"{SHA}"'})
    assert fresh.status == 206


async def test_download_charset_follows_encoding(client: Client, session: str) -> None:
    data = "a;b\ncafé;1\n".encode("cp1252")
    file = (await _upload(client, data))["file"]
    assert isinstance(file, dict)
    resp = await client.get(f"/api/csv/files/{file['id']}/content")
    assert resp.headers["Content-Type"] == "text/csv; charset=windows-1252"
    assert await resp.read() == data


async def test_unknown_file_content_is_404(client: Client) -> None:
    await assert_problem(await client.get("/api/csv/files/nope/content"), 404)


async def test_large_download_streams_whole(client: Client, session: str) -> None:
    data = csv_bytes(200_000)
    file = (await _upload(client, data))["file"]
    assert isinstance(file, dict)
    resp = await client.get(f"/api/csv/files/{file['id']}/content")
    assert hashlib.sha256(await resp.read()).hexdigest() == file["sha256"]


async def test_session_archive(client: Client, session: str) -> None:
    bodies = {"a.csv": b"x\n1\n", "b.csv": b"y\n2\n"}
    await _upload(client, bodies["a.csv"])  # named data.csv
    await _upload(client, bodies["b.csv"])  # also data.csv: disambiguated
    big = csv_bytes(50_000)
    form = upload_form(big, filename="big.csv")
    assert (await client.post("/api/csv/upload", data=form)).status == 201
    resp = await client.get(f"/api/csv/sessions/{session}/archive")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/zip"
    assert f'filename="{session}.zip"' in resp.headers["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
    assert archive.namelist() == ["data.csv", "data (1).csv", "big.csv"]
    assert archive.read("data.csv") == bodies["a.csv"]
    assert archive.read("data (1).csv") == bodies["b.csv"]
    assert archive.read("big.csv") == big
    assert archive.testzip() is None
    await assert_problem(await client.get("/api/csv/sessions/nope/archive"), 404)
