"""Integrity (digests, dedupe) and files coming back out: content, ranges, archives."""

from __future__ import annotations

import base64
import codecs
import hashlib
import io
import zipfile
from dataclasses import replace

import pytest
from aiohttp import FormData

from csvstore.config import Settings
from tests.conftest import (
    Client,
    MakeClient,
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
    for malformed in ("sha-256=abc", "sha-256=:!!!:", "sha-256=:AAAA:", "garbage", f"{good}, md5"):
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


async def test_date_conditions_on_a_download(client: Client, session: str) -> None:
    """RFC 9110's date preconditions, for a stored file that never changes."""
    file = (await _upload(client))["file"]
    assert isinstance(file, dict)
    url = f"/api/csv/files/{file['id']}/content"
    stamp = (await client.head(url)).headers["Last-Modified"]
    later = "Fri, 01 Jan 2100 00:00:00 GMT"
    earlier = "Thu, 01 Jan 1970 00:00:00 GMT"
    for since in (stamp, later):
        resp = await client.get(url, headers={"If-Modified-Since": since})
        assert resp.status == 304, since
        assert resp.headers["Last-Modified"] == stamp
    for since in (earlier, "not a date"):
        assert (await client.get(url, headers={"If-Modified-Since": since})).status == 200
    # If-None-Match wins over a date (RFC 9110 13.2.2).
    stale = {"If-None-Match": '"other"', "If-Modified-Since": later}
    assert (await client.get(url, headers=stale)).status == 200
    # If-Range with the Last-Modified date: the range is sent; with another date, the file.
    part = await client.get(url, headers={"Range": "bytes=0-1", "If-Range": stamp})
    assert (part.status, await part.read()) == (206, BODY[:2])
    whole = await client.get(url, headers={"Range": "bytes=0-1", "If-Range": earlier})
    assert (whole.status, await whole.read()) == (200, BODY)
    # If-Match and If-Unmodified-Since: 412 when they fail.
    assert (await client.get(url, headers={"If-Match": f'"{SHA}"'})).status == 200
    assert (await client.get(url, headers={"If-Match": "*"})).status == 200
    await assert_problem(await client.get(url, headers={"If-Match": '"other"'}), 412)
    # If-Match compares strongly (RFC 9110 13.1.1): a weak tag never matches (it did).
    await assert_problem(await client.get(url, headers={"If-Match": f'W/"{SHA}"'}), 412)
    await assert_problem(await client.get(url, headers={"If-Unmodified-Since": earlier}), 412)
    assert (await client.get(url, headers={"If-Unmodified-Since": later})).status == 200


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
        problem = await assert_problem(resp, 416)
        assert resp.headers["Content-Range"] == f"bytes */{len(BODY)}"
        why = "ends before it starts" if header == "bytes=9-3" else "is outside the file"
        assert why in problem["detail"], problem
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


async def _archive_of(client: Client, session: str, names: list[str]) -> zipfile.ZipFile:
    """The session's archive after one upload per name, each file holding its name."""
    for name in names:
        form = upload_form(f"n\n{name}\n".encode(), filename=name)
        assert (await client.post("/api/csv/upload", data=form)).status == 201
    resp = await client.get(f"/api/csv/sessions/{session}/archive")
    return zipfile.ZipFile(io.BytesIO(await resp.read()))


async def test_archive_names_keep_their_extension(client: Client, session: str) -> None:
    archive = await _archive_of(client, session, ["x.csv", "x.csv", "X.CSV", ".csv", ".csv"])
    assert archive.namelist() == ["x.csv", "x (1).csv", "X (2).CSV", ".csv", "(1).csv"]
    assert archive.read("(1).csv") == b"n\n.csv\n"


async def test_archive_entries_are_names_windows_accepts(client: Client, session: str) -> None:
    names = ["report 10:30.csv", 'a<b>|"?*.csv', "Λεωνίδας.csv", "report 10_30.csv", "NUL.csv"]
    archive = await _archive_of(client, session, names)
    assert archive.namelist() == [
        "report 10_30.csv",
        "a_b_____.csv",
        "Λεωνίδας.csv",
        "report 10_30 (1).csv",
        "_NUL.csv",
    ]
    assert archive.read("report 10_30.csv") == b"n\nreport 10:30.csv\n"


# Row paging


def _big_csv(rows: int) -> tuple[bytes, list[list[str]]]:
    """A CSV whose rows include quoted delimiters and newlines, and what csv.reader sees."""
    import csv as csvmod

    records = [["id", "text", "n"]]
    for i in range(rows):
        text = (
            f'line {i}, with "quotes"'
            if i % 7 == 0
            else (f"two\nlines {i}" if i % 11 == 0 else f"t{i}")
        )
        records.append([str(i), text, str(i * 3)])
    out = io.StringIO(newline="")
    csvmod.writer(out, lineterminator="\r\n").writerows(records)
    return out.getvalue().encode(), records[1:]


async def test_rows_paging_across_a_large_file(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    data, expected = _big_csv(25_000)  # checkpoints every 10,000 rows
    resp = await client.post("/api/csv/upload", data=upload_form(data))
    file = (await resp.json())["file"]
    assert file["row_count"] == 25_000
    assert file["columns"] == ["id", "text", "n"]
    assert file["line_terminator"] == "\r\n"
    url = f"/api/csv/files/{file['id']}/rows"

    first = await (await client.get(url)).json()
    assert first["columns"] == ["id", "text", "n"]
    assert first["rows"] == expected[:100]
    assert first["next_offset"] == 100
    for offset in (0, 9_999, 10_000, 10_001, 19_990, 24_990):
        page = await (await client.get(f"{url}?offset={offset}&limit=17")).json()
        assert page["rows"] == expected[offset : offset + 17]
        want_next = offset + 17 if offset + 17 < 25_000 else None
        assert page["next_offset"] == want_next
    last = await (await client.get(f"{url}?offset=24999&limit=1000")).json()
    assert last["rows"] == expected[24_999:]
    assert last["next_offset"] is None
    beyond = await (await client.get(f"{url}?offset=30000")).json()
    assert beyond["rows"] == []
    assert beyond["next_offset"] is None
    for bad in ("offset=-1", "limit=0", "limit=1001", "offset=x", "other=1", "offset=1&offset=2"):
        await assert_problem(await client.get(f"{url}?{bad}"), 400)
    await assert_problem(await client.get("/api/csv/files/nope/rows"), 404)


async def test_rows_in_the_files_own_dialect_and_encoding(client: Client, session: str) -> None:
    data = "nom;prix\ncafé;3,50\nthé;2\n".encode("cp1252")
    file = (await _upload(client, data))["file"]
    assert isinstance(file, dict)
    assert file["encoding"] == "cp1252"
    assert file["delimiter"] == ";"
    page = await (await client.get(f"/api/csv/files/{file['id']}/rows")).json()
    assert page == {
        "columns": ["nom", "prix"],
        "rows": [["café", "3,50"], ["thé", "2"]],
        "next_offset": None,
        "truncated": [],
    }
    utf16 = (await _upload(client, "a\tb\n1\tü\n".encode("utf-16")))["file"]
    assert isinstance(utf16, dict)
    page = await (await client.get(f"/api/csv/files/{utf16['id']}/rows")).json()
    assert page["rows"] == [["1", "ü"]]


async def test_rows_follow_the_bound_settings(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(replace(settings, rows_cell_limit=10, rows_max_bytes=64 * 1024))
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    rows = [[str(i), "x" * (i * 100)] for i in range(200)]  # 2 MB: rows grow to 20 KB
    data = b"n,text\n" + b"".join(f"{n},{text}\n".encode() for n, text in rows)
    file = (await (await client.post("/api/csv/upload", data=upload_form(data))).json())["file"]
    url = f"/api/csv/files/{file['id']}/rows?limit=1000"
    seen: list[list[str]] = []
    offset: int | None = 0
    while offset is not None:
        page = await (await client.get(f"{url}&offset={offset}")).json()
        assert 0 < len(page["rows"]) < 200  # 64 KiB a page: never all of the 2 MB
        assert page["truncated"] == [[i, 1] for i, row in enumerate(page["rows"]) if row[1]]
        seen += page["rows"]
        offset = page["next_offset"]
    assert seen == [[n, text[:10]] for n, text in rows]


async def test_rows_of_an_unprofiled_file_is_409(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, analyse_uploads=False))
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    resp = await client.post("/api/csv/upload", data=upload_form(BODY))
    file = (await resp.json())["file"]
    assert file["sha256"] is None
    assert file["row_count"] is None
    body = await assert_problem(await client.get(f"/api/csv/files/{file['id']}/rows"), 409)
    assert "profile" in body["detail"]


# The profile, through the API, on real-world-shaped files

PROFILES = [
    (  # an Excel export: cp1252, semicolons, CRLF, decimal commas
        "excel.csv",
        "Kunde;Straße;Betrag\r\nMüller;Hauptstraße 1;12,50\r\nCafé;Rue 2;3,00\r\n".encode(
            "cp1252"
        ),
        {"encoding": "cp1252", "delimiter": ";", "line_terminator": "\r\n", "has_header": True,
         "columns": ["Kunde", "Straße", "Betrag"], "column_count": 3, "row_count": 2,
         "ragged_rows": 0},
    ),
    (
        "bom.csv",
        codecs.BOM_UTF8 + "id,naïve\n1,x\n2,y\n".encode(),
        {"encoding": "utf-8-sig", "delimiter": ",", "columns": ["id", "naïve"], "row_count": 2},
    ),
    (
        "tabs.csv",
        b"a\tb\tc\n1\t2\t3\n4\t5\t6\n",
        {"delimiter": "\t", "columns": ["a", "b", "c"], "row_count": 2, "ragged_rows": 0},
    ),
    (
        "quoted.csv",
        b'name,comment\nann,"line one\nline two, with comma"\nbob,"say ""hi"""\n',
        {"delimiter": ",", "quotechar": '"', "row_count": 2, "ragged_rows": 0,
         "line_terminator": "\n"},
    ),
    (
        "ragged.csv",
        b"a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n",
        {"row_count": 4, "ragged_rows": 2, "column_count": 3},
    ),
    (
        "no-newline.csv",
        b"a,b\n1,2\n3,4",
        {"row_count": 2, "ragged_rows": 0},
    ),
    ("empty.csv", b"", {"row_count": 0, "has_header": False, "columns": [], "encoding": "utf-8"}),
    ("header-only.csv", b"alpha,beta,gamma\n",
     {"row_count": 0, "has_header": True, "columns": ["alpha", "beta", "gamma"]}),
    ("pipes.csv", b"x|y\n1|2\n", {"delimiter": "|", "row_count": 1}),
    ("cr-only.csv", b"a,b\r1,2\r3,4\r", {"line_terminator": "\r", "row_count": 2}),
    ("links.csv", b"".join(b"https://example.com/p/%d\n" % i for i in range(20)),
     {"has_header": False, "columns": [], "column_count": 1, "row_count": 20}),
    ("spectrum.csv", b"sample,400,410,420\nA,0.12,0.31,0.55\nB,0.14,0.29,0.61\n",
     {"has_header": True, "columns": ["sample", "400", "410", "420"], "row_count": 2}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "expected"), PROFILES, ids=[p[0] for p in PROFILES])
async def test_profile_of_real_world_files(
    client: Client, session: str, name: str, data: bytes, expected: dict[str, object]
) -> None:
    resp = await client.post("/api/csv/upload", data=upload_form(data, filename=name))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    for field, value in expected.items():
        assert file[field] == value, (field, file)
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    # stored, and the same when read back
    again = await (await client.get(f"/api/csv/files/{file['id']}")).json()
    assert again == file
    if file["row_count"]:  # /rows starts where the profile says the rows start
        rows = (await (await client.get(f"/api/csv/files/{file['id']}/rows")).json())["rows"]
        assert len(rows) == file["row_count"]
        assert (
            rows[0][0]
            == data.decode(file["encoding"]).splitlines()[file["has_header"]][: len(rows[0][0])]
        )


async def test_strict_refuses_ragged_files(
    client: Client, session: str, settings: Settings
) -> None:
    ragged = b"a,b,c\n1,2,3\n4,5\n"
    body = await assert_problem(
        await client.post("/api/csv/upload", data=_with_field(ragged, "strict", "true")), 400
    )
    assert "1 row(s)" in body["detail"]
    assert stored_state(settings) == (set(), set(), [])
    ok = await client.post("/api/csv/upload", data=_with_field(b"a,b\n1,2\n", "strict", "true"))
    assert ok.status == 201
    lenient = await client.post("/api/csv/upload", data=upload_form(ragged))
    assert (await lenient.json())["file"]["ragged_rows"] == 1


def _with_field(data: bytes, name: str, value: str) -> FormData:
    form = upload_form(data)
    form.add_field(name, value)
    return form
