"""Uploads: both field orders, what counts as a CSV, limits, and nothing left behind."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiohttp import FormData

from csvstore.analysis.stream import UploadAnalysis
from csvstore.config import Settings
from csvstore.web.keys import SETTINGS_KEY
from tests.conftest import (
    Client,
    MakeClient,
    assert_consistent,
    assert_problem,
    csv_bytes,
    raw_multipart,
    stored_bytes,
    stored_state,
    upload_form,
)

ORIGINAL_FIELDS = {"id", "filename", "original_filename", "file_size", "content_type", "created_at"}
PROFILE_FIELDS = {
    "sha256", "encoding", "delimiter", "quotechar", "line_terminator", "has_header", "columns",
    "column_count", "row_count", "ragged_rows", "encoding_source", "encoding_confidence",
    "invalid_bytes", "first_invalid_offset", "preamble_lines", "skip_initial_space",
    "comment_char", "duplicate_columns", "footer_lines", "escape_char", "header_rule",
}  # fmt: skip


def _settings_of(client: Client) -> Settings:
    app = client.app
    assert app is not None
    return app[SETTINGS_KEY]


@pytest.mark.parametrize("session_first", [True, False], ids=["requests-order", "curl-order"])
async def test_upload_in_either_field_order(
    client: Client, session: str, session_first: bool
) -> None:
    data = csv_bytes(5)
    form = upload_form(data, session_first=session_first, content_type="application/octet-stream")
    resp = await client.post("/api/csv/upload", data=form)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["message"] == "File uploaded successfully"
    assert body["session_id"] == session
    file = body["file"]
    assert set(file) == ORIGINAL_FIELDS | PROFILE_FIELDS
    assert file["original_filename"] == "data.csv"
    assert file["filename"] == f"{file['id']}.csv"
    assert file["file_size"] == len(data)
    assert file["content_type"] == "text/csv"
    assert resp.headers["Location"] == f"/api/csv/files/{file['id']}"
    assert stored_bytes(_settings_of(client), file["filename"]) == data
    got = await client.get(resp.headers["Location"])
    assert got.status == 200
    assert await got.json() == file


async def test_two_uploads_of_one_name_do_not_collide(client: Client, session: str) -> None:
    first = await (await client.post("/api/csv/upload", data=upload_form(b"a\n1\n"))).json()
    second = await (await client.post("/api/csv/upload", data=upload_form(b"a\n2\n"))).json()
    assert first["file"]["filename"] != second["file"]["filename"]
    files = (await (await client.get(f"/api/csv/sessions/{session}")).json())["csv_files"]
    assert [f["id"] for f in files] == [first["file"]["id"], second["file"]["id"]]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("UPPER.CSV", b"a,b\n1,2\n"),
        ("empty.csv", b""),
        ("bom.csv", codecs.BOM_UTF8 + "naïve,x\n1,2\n".encode()),
        ("excel.csv", "name;price\ncafé;3,50 €\n".encode("cp1252")),
        ("utf16.csv", "a,b\n1,ü\n".encode("utf-16")),
        ("utf16be.csv", codecs.BOM_UTF16_BE + "a,b\n1,2\n".encode("utf-16-be")),
        ("short.csv", b"x"),
    ],
)
async def test_csv_files_accepted(client: Client, session: str, name: str, data: bytes) -> None:
    resp = await client.post("/api/csv/upload", data=upload_form(data, filename=name))
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["file"]["file_size"] == len(data)


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(100)
ZIP = b"PK\x03\x04\x14\x00\x06\x00" + bytes(100)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("image.csv", PNG, "PNG"),
        ("book.csv", ZIP, "ZIP"),
        ("doc.csv", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"1 0 obj\n" * 10, "PDF"),
        ("packed.csv", b"\x1f\x8b\x08\x00" + bytes(50), "gzip"),
        ("nul.csv", b"a,b\n1,\x002\n", "NUL"),
        ("late-nul.csv", b"a,b\n" * 100_000 + b"\x00", "NUL"),
        ("undefined.csv", b"a,b\n\x81\x8d,\xc3\n", "encoding"),
        ("bad-bom.csv", codecs.BOM_UTF8 + b"a,\xff\xfe\n", "UTF-8"),
        ("utf16-nul.csv", "a,b\n\x00\n".encode("utf-16"), "NUL"),
        ("data.txt", b"a,b\n1,2\n", ".csv"),
        ("data.csv.exe", b"a,b\n1,2\n", ".csv"),
    ],
)
async def test_not_a_csv_is_400_and_nothing_stored(
    client: Client, session: str, name: str, data: bytes, reason: str
) -> None:
    resp = await client.post("/api/csv/upload", data=upload_form(data, filename=name))
    body = await assert_problem(resp, 400)
    assert reason.lower() in body["detail"].lower()
    on_disk, listed, temps = stored_state(_settings_of(client))
    assert on_disk == listed == set()
    assert temps == []


async def test_missing_parts_are_400(client: Client, session: str) -> None:
    no_file = FormData()
    no_file.add_field("session_id", session)
    no_file.add_field("other", "x")
    body = await assert_problem(await client.post("/api/csv/upload", data=no_file), 400)
    assert "'file'" in body["detail"]
    no_session = upload_form(csv_bytes(), session_id=None)
    body = await assert_problem(await client.post("/api/csv/upload", data=no_session), 400)
    assert "'session_id'" in body["detail"]


async def test_file_part_without_filename_is_400(client: Client, session: str) -> None:
    data, headers = raw_multipart(
        ('form-data; name="session_id"', session.encode()),
        ('form-data; name="file"', b"a,b\n1,2\n"),
    )
    resp = await client.post("/api/csv/upload", data=data, headers=headers)
    body = await assert_problem(resp, 400)
    assert "filename" in body["detail"]


async def test_duplicate_parts_are_400(client: Client, session: str) -> None:
    form = upload_form(csv_bytes())
    form.add_field("file", csv_bytes(), filename="two.csv", content_type="text/csv")
    await assert_problem(await client.post("/api/csv/upload", data=form), 400)
    form = upload_form(csv_bytes())
    form.add_field("session_id", session)
    await assert_problem(await client.post("/api/csv/upload", data=form), 400)


async def test_not_multipart_is_400(client: Client, session: str) -> None:
    resp = await client.post("/api/csv/upload", json={"session_id": session})
    body = await assert_problem(resp, 400)
    assert "multipart/form-data" in body["detail"]
    resp = await client.post(
        "/api/csv/upload", data=b"garbage", headers={"Content-Type": "multipart/form-data"}
    )
    await assert_problem(resp, 400)


@pytest.mark.parametrize("session_first", [True, False])
async def test_unknown_session_is_404(client: Client, session_first: bool) -> None:
    form = upload_form(csv_bytes(), session_id="ghost", session_first=session_first)
    body = await assert_problem(await client.post("/api/csv/upload", data=form), 404)
    assert "ghost" in body["detail"]


async def test_invalid_session_id_in_form_is_400(client: Client) -> None:
    form = upload_form(csv_bytes(), session_id="../etc")
    body = await assert_problem(await client.post("/api/csv/upload", data=form), 400)
    assert "session_id" in body["errors"]


@pytest.mark.parametrize(
    ("header_value", "stored"),
    [
        ("../../etc/passwd.csv", "passwd.csv"),
        ("/abs/path/x.csv", "x.csv"),
        ("C:\\\\Users\\\\me\\\\data.csv", "data.csv"),  # backslashes escaped in the header
        ("a%0D%0ASet-Cookie: x.csv", "aSet-Cookie: x.csv"),  # WHATWG escapes %0D %0A %22 only
        ("tab%09here.csv", "tab%09here.csv"),
        ("..%2F..%2Fx.csv", "..%2F..%2Fx.csv"),  # a literal name: no percent-decoding
        ("名前.csv", "名前.csv"),
    ],
)
async def test_original_filenames_are_sanitised(
    client: Client, session: str, header_value: str, stored: str
) -> None:
    body, headers = raw_multipart(
        ('form-data; name="session_id"', session.encode()),
        (f'form-data; name="file"; filename="{header_value}"', b"a\n1\n"),
    )
    resp = await client.post("/api/csv/upload", data=body, headers=headers)
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert file["original_filename"] == stored
    assert file["filename"] == f"{file['id']}.csv"


async def test_filename_through_aiohttp_client(client: Client, session: str) -> None:
    form = upload_form(b"a\n1\n", filename="../my data.csv")
    resp = await client.post("/api/csv/upload", data=form)
    assert (await resp.json())["file"]["original_filename"] == "my data.csv"


async def test_long_filenames(client: Client, session: str) -> None:
    # past the part-header limit: refused cleanly
    huge = upload_form(b"a\n1\n", filename="x" * 10_000 + ".csv")
    body = await assert_problem(await client.post("/api/csv/upload", data=huge), 400)
    assert "header" in body["detail"]
    # long but within it: stored, the original name shortened to 255 characters
    resp = await client.post(
        "/api/csv/upload", data=upload_form(b"a\n1\n", filename="x" * 1_000 + ".csv")
    )
    assert resp.status == 201
    name = (await resp.json())["file"]["original_filename"]
    assert len(name) == 255
    assert name.endswith(".csv")


async def _chunks(total: int, piece: bytes) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        block = piece * max(1, min(total - sent, 1024 * 1024) // len(piece))
        block = block[: total - sent]
        sent += len(block)
        yield block


@pytest.mark.parametrize("session_first", [True, False])
async def test_too_large_is_413_and_nothing_stored(
    make_client: MakeClient, settings: Settings, session_first: bool
) -> None:
    small = replace(settings, max_upload_size=100_000)
    client = await make_client(small)
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    # streamed without a Content-Length: the limit is enforced while reading
    form = upload_form(_chunks(300_000, b"1,2,3\n"), session_first=session_first)
    body = await assert_problem(await client.post("/api/csv/upload", data=form), 413)
    assert "100000" in body["detail"]
    # with a Content-Length that cannot fit: refused before reading the body
    big = upload_form(b"1,2\n" * 60_000, session_first=session_first)
    await assert_problem(await client.post("/api/csv/upload", data=big), 413)
    # exactly at the limit is fine
    exact = upload_form(b"1\n" * 50_000, session_first=session_first)
    assert (await client.post("/api/csv/upload", data=exact)).status == 201
    on_disk, listed, temps = stored_state(small)
    assert len(on_disk) == len(listed) == 1
    assert temps == []


async def test_100_mb_streamed_upload(client: Client, session: str) -> None:
    size = 100 * 1024 * 1024
    line = b"12345,some text,3.14159,2024-01-01\n"
    form = upload_form(_chunks(size, line), session_first=False)
    resp = await client.post("/api/csv/upload", data=form)
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert file["file_size"] == size
    stored = stored_bytes(_settings_of(client), file["filename"])
    assert stored is not None
    assert len(stored) == size
    assert stored[: len(line)] == line


async def test_concurrent_uploads_into_one_session(client: Client, session: str) -> None:
    bodies = [csv_bytes(i + 1) for i in range(40)]
    responses = await asyncio.gather(
        *(client.post("/api/csv/upload", data=upload_form(b)) for b in bodies)
    )
    assert [r.status for r in responses] == [201] * 40
    files = (await (await client.get(f"/api/csv/sessions/{session}")).json())["csv_files"]
    assert sorted(f["file_size"] for f in files) == sorted(len(b) for b in bodies)


async def test_delete_session_racing_uploads_leaves_no_orphan(client: Client) -> None:
    for round_ in range(5):
        sid = f"race-{round_}"
        await client.post("/api/csv/sessions", json={"session_id": sid})
        uploads = [
            client.post("/api/csv/upload", data=upload_form(csv_bytes(50), session_id=sid))
            for _ in range(15)
        ]
        results = await asyncio.gather(*uploads, client.delete(f"/api/csv/sessions/{sid}"))
        statuses = [r.status for r in results[:-1]]
        assert results[-1].status == 200
        assert set(statuses) <= {201, 404}
        # whatever won, the session and every file of it are gone
        await assert_problem(await client.get(f"/api/csv/sessions/{sid}"), 404)
        assert_consistent(_settings_of(client))
    on_disk, listed, _ = stored_state(_settings_of(client))
    assert on_disk == listed == set()


async def test_delete_file(client: Client, session: str) -> None:
    resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes()))
    file = (await resp.json())["file"]
    assert stored_bytes(_settings_of(client), file["filename"]) is not None
    resp = await client.delete(f"/api/csv/files/{file['id']}")
    assert resp.status == 200
    assert await resp.json() == {"message": "File deleted successfully"}
    assert stored_bytes(_settings_of(client), file["filename"]) is None
    await assert_problem(await client.get(f"/api/csv/files/{file['id']}"), 404)
    await assert_problem(await client.delete(f"/api/csv/files/{file['id']}"), 404)
    session_body = await (await client.get(f"/api/csv/sessions/{session}")).json()
    assert session_body["csv_files"] == []


async def test_thousands_of_tiny_fields_are_400(client: Client, session: str) -> None:
    parts = [(f'form-data; name="f{i}"', b"x") for i in range(5000)]
    data, headers = raw_multipart(*parts)
    body = await assert_problem(
        await client.post("/api/csv/upload", data=data, headers=headers), 400
    )
    assert "parts" in body["detail"]


async def test_non_utf8_and_nul_in_filename(client: Client, session: str) -> None:
    for raw_name, expected in [(b"caf\xe9.csv", None), (b"a\x00b.csv", "ab.csv")]:
        data, headers = raw_multipart(
            ('form-data; name="session_id"', session.encode()),
            ("", b""),
        )
        head = b'Content-Disposition: form-data; name="file"; filename="' + raw_name + b'"'
        data = data.replace(b"Content-Disposition: \r\n\r\n\r\n", head + b"\r\n\r\na\n1\n\r\n")
        resp = await client.post("/api/csv/upload", data=data, headers=headers)
        assert resp.status in (201, 400), await resp.text()
        if resp.status == 201:
            name = (await resp.json())["file"]["original_filename"]
            assert "\x00" not in name
            assert name.endswith(".csv")
            if expected:
                assert name == expected
        else:
            await assert_problem(resp, 400)


def _awkward_csv(rows: int) -> bytes:
    """Quoted newlines, doubled quotes, multi-byte characters and a ragged row: whatever
    the block boundaries cut, the counts must not change."""
    lines = [b"id,name,note\r\n"]
    for i in range(rows):
        note = b'"line one\nline ""two"", caf\xc3\xa9"' if i % 7 == 0 else b"\xe2\x82\xac%d" % i
        lines.append(b"%d,name %d,%s\r\n" % (i, i, note))
        if i == rows - 50:
            lines.append(b"%d,ragged\r\n" % i)
    return b"".join(lines)


@pytest.mark.parametrize("chunk_size", [256 * 1024 + 7, 300_001, 1024 * 1024 - 3])
async def test_facts_of_a_many_block_upload_are_its_whole_bytes(
    make_client: MakeClient, settings: Settings, chunk_size: int
) -> None:
    client = await make_client(replace(settings, upload_chunk_size=chunk_size))
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    data = _awkward_csv(120_000)
    assert len(data) > 3 * chunk_size
    resp = await client.post("/api/csv/upload", data=upload_form(data))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    whole = UploadAnalysis()
    whole.feed(data)
    expected = whole.finish()
    assert file["sha256"] == hashlib.sha256(data).hexdigest() == expected.sha256
    assert file["row_count"] == expected.row_count == 120_001
    assert file["ragged_rows"] == expected.ragged_rows == 1
    assert {name: file[name] for name in PROFILE_FIELDS} == {
        name: getattr(expected, name) for name in PROFILE_FIELDS
    }
    assert stored_bytes(_settings_of(client), file["filename"]) == data


async def test_a_nul_in_a_later_block_is_refused_and_nothing_stored(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, upload_chunk_size=256 * 1024 + 7))
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    data = _awkward_csv(60_000)
    data = data[: len(data) // 2] + b"\x00" + data[len(data) // 2 :]
    assert len(data) // 2 > 2 * (256 * 1024 + 7)
    resp = await client.post("/api/csv/upload", data=upload_form(data))
    body = await assert_problem(resp, 400)
    assert "NUL" in body["detail"]
    on_disk, listed, temps = stored_state(_settings_of(client))
    assert not on_disk
    assert not listed
    assert temps == []
