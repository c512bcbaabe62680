"""Sessions: create, read, list with paging, delete -- and every way to get them wrong."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urljoin

import pytest

from csvstore.web.keys import STORE_KEY
from csvstore.web.schemas import SessionSchema
from tests.conftest import Client, assert_problem, csv_bytes, upload_form

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_create_session_answers_201_with_location(client: Client) -> None:
    resp = await client.post("/api/csv/sessions", json={"session_id": "my_session_123"})
    assert resp.status == 201
    assert resp.headers["Location"] == "/api/csv/sessions/my_session_123"
    assert await resp.json() == {
        "message": "Session created successfully",
        "session_id": "my_session_123",
    }
    follow = await client.get(resp.headers["Location"])
    assert follow.status == 200


async def test_duplicate_session_id_is_400(client: Client, session: str) -> None:
    resp = await client.post("/api/csv/sessions", json={"session_id": session})
    body = await assert_problem(resp, 400)
    assert "already exists" in body["detail"]


@pytest.mark.parametrize(
    "bad_id",
    ["", ".hidden", "a" * 129, "has space", "slash/inside", "ünïcode", "semi;colon", "new\nline"],
)
async def test_invalid_session_ids_are_400_naming_the_rule(client: Client, bad_id: str) -> None:
    resp = await client.post("/api/csv/sessions", json={"session_id": bad_id})
    body = await assert_problem(resp, 400)
    assert "1-128 characters" in body["detail"]
    assert "session_id" in body["errors"]


@pytest.mark.parametrize("good_id", ["a", "a" * 128, "A.b_c-9", "_x", "-y", "2024.01.01"])
async def test_valid_session_ids_are_accepted(client: Client, good_id: str) -> None:
    resp = await client.post("/api/csv/sessions", json={"session_id": good_id})
    assert resp.status == 201
    got = await client.get(f"/api/csv/sessions/{good_id}")
    assert (await got.json())["session_id"] == good_id


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"session_id": 5}', "session_id"),
        (b"{}", "session_id"),
        (b'{"session_id": "ok", "extra": 1}', "extra"),
        (b'["session_id"]', "_schema"),
        (b'"just a string"', "_schema"),
    ],
)
async def test_wrong_json_shapes_are_400(client: Client, body: bytes, expected: str) -> None:
    resp = await client.post(
        "/api/csv/sessions", data=body, headers={"Content-Type": "application/json"}
    )
    problem = await assert_problem(resp, 400)
    assert expected in problem["errors"]


async def test_malformed_json_is_400(client: Client) -> None:
    resp = await client.post(
        "/api/csv/sessions", data=b'{"session_id": ', headers={"Content-Type": "application/json"}
    )
    body = await assert_problem(resp, 400)
    assert "not valid JSON" in body["detail"]


async def test_deeply_nested_json_is_400(client: Client) -> None:
    resp = await client.post(
        "/api/csv/sessions",
        data=b"[" * 5000 + b"]" * 5000,
        headers={"Content-Type": "application/json"},
    )
    await assert_problem(resp, 400)


async def test_wrong_content_type_is_415(client: Client) -> None:
    resp = await client.post("/api/csv/sessions", data={"session_id": "x"})
    body = await assert_problem(resp, 415)
    assert "application/json" in body["detail"]


async def test_huge_json_body_is_413(client: Client) -> None:
    big = b'{"session_id": "' + b"a" * 200_000 + b'"}'
    resp = await client.post(
        "/api/csv/sessions", data=big, headers={"Content-Type": "application/json"}
    )
    await assert_problem(resp, 413)


async def test_get_session_shape(client: Client, session: str) -> None:
    resp = await client.get(f"/api/csv/sessions/{session}")
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"id", "session_id", "created_at", "updated_at", "expires_at", "csv_files"}
    assert body["expires_at"] is None  # no TTL unless asked for
    assert body["session_id"] == session
    assert re.fullmatch(r"[0-9a-f-]{36}", body["id"])
    assert TIMESTAMP.match(body["created_at"])
    assert body["updated_at"] == body["created_at"]
    assert body["csv_files"] == []


async def test_unknown_session_is_404(client: Client) -> None:
    body = await assert_problem(await client.get("/api/csv/sessions/nope"), 404)
    assert "nope" in body["detail"]
    await assert_problem(await client.delete("/api/csv/sessions/nope"), 404)


async def test_updated_at_moves_when_files_come_and_go(client: Client, session: str) -> None:
    created = await (await client.get(f"/api/csv/sessions/{session}")).json()
    await asyncio.sleep(0.005)
    up = await client.post("/api/csv/upload", data=upload_form(csv_bytes()))
    file_id = (await up.json())["file"]["id"]
    after_upload = await (await client.get(f"/api/csv/sessions/{session}")).json()
    assert after_upload["updated_at"] > created["updated_at"]
    assert after_upload["created_at"] == created["created_at"]
    await asyncio.sleep(0.005)
    assert (await client.delete(f"/api/csv/files/{file_id}")).status == 200
    after_delete = await (await client.get(f"/api/csv/sessions/{session}")).json()
    assert after_delete["updated_at"] > after_upload["updated_at"]
    assert TIMESTAMP.match(after_delete["updated_at"])


async def test_list_returns_an_array_with_files(client: Client, session: str) -> None:
    await client.post("/api/csv/upload", data=upload_form(csv_bytes()))
    resp = await client.get("/api/csv/sessions")
    assert resp.status == 200
    assert "Link" not in resp.headers
    body = await resp.json()
    assert isinstance(body, list)
    assert [s["session_id"] for s in body] == [session]
    assert len(body[0]["csv_files"]) == 1
    assert body[0]["csv_files"][0]["original_filename"] == "data.csv"


async def test_list_pages_follow_link_headers(client: Client) -> None:
    ids = [f"sess-{i:02d}" for i in range(7)]
    for sid in reversed(ids):
        assert (await client.post("/api/csv/sessions", json={"session_id": sid})).status == 201
    for sid in ids[:3]:
        form = upload_form(csv_bytes(), session_id=sid)
        assert (await client.post("/api/csv/upload", data=form)).status == 201
    seen: list[str] = []
    # The Link header is relative: resolved against the URL of the page that carried it.
    url: str | None = str(client.make_url("/api/csv/sessions?limit=3"))
    pages = 0
    while url:
        resp = await client.session.get(url)
        assert resp.status == 200
        page = await resp.json()
        assert len(page) <= 3
        seen += [s["session_id"] for s in page]
        for s in page:
            expected_files = 1 if s["session_id"] in ids[:3] else 0
            assert len(s["csv_files"]) == expected_files
        link = resp.headers.get("Link")
        url = None
        if link:
            match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
            assert match, link
            url = urljoin(str(resp.url), match.group(1))
        pages += 1
    assert seen == ids  # every session once, in session_id order
    assert pages == 3


async def test_list_after_cursor_and_bad_paging(client: Client) -> None:
    for sid in ("a", "b", "c"):
        await client.post("/api/csv/sessions", json={"session_id": sid})
    body = await (await client.get("/api/csv/sessions?after=a&limit=1")).json()
    assert [s["session_id"] for s in body] == ["b"]
    for query in ("limit=0", "limit=1001", "limit=x", "bogus=1"):
        await assert_problem(await client.get(f"/api/csv/sessions?{query}"), 400)
    # Given twice, which one counts would be a guess.
    twice = await assert_problem(await client.get("/api/csv/sessions?limit=2&limit=3"), 400)
    assert twice["detail"] == "invalid query: limit: given 2 times; send it once", twice


async def test_delete_session_removes_rows_and_files(client: Client, session: str) -> None:
    file_ids = []
    for _ in range(3):
        resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes()))
        file_ids.append((await resp.json())["file"]["id"])
    resp = await client.delete(f"/api/csv/sessions/{session}")
    assert resp.status == 200
    assert await resp.json() == {"message": "Session deleted successfully"}
    await assert_problem(await client.get(f"/api/csv/sessions/{session}"), 404)
    for file_id in file_ids:
        await assert_problem(await client.get(f"/api/csv/files/{file_id}"), 404)
    # the session id is free again
    assert (await client.post("/api/csv/sessions", json={"session_id": session})).status == 201


async def test_concurrent_creates_of_one_id_have_one_winner(client: Client) -> None:
    responses = await asyncio.gather(
        *(client.post("/api/csv/sessions", json={"session_id": "race"}) for _ in range(20))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] + [400] * 19


async def test_listing_rendered_by_the_database_equals_the_schema_dump(client: Client) -> None:
    """The listing's JSON comes from the database's JSON functions; it must be exactly what
    SessionSchema.dump makes of the same rows, for every kind of profile a file can have."""
    files = {
        "header.csv": b"id,name\n1,a\n2,b\n",
        "numbers.csv": b"1,2\n3,4\n5,6\n",  # has_header false
        "semi.csv": "name;city\nJosé;Zürich\n".encode("cp1252"),
        "tabs.csv": b"a\tb\r\n1\t2\r\n",
        "empty.csv": b"",  # no columns
        'quote "and" ünïcode\\.csv': b'x,"y\nz"\n1,2\n',
    }
    for session_id in ("list-a", "list-b", "list-empty"):
        assert (await client.post("/api/csv/sessions", json={"session_id": session_id})).ok
    for name, data in files.items():
        form = upload_form(data, session_id="list-a", filename=name)
        resp = await client.post("/api/csv/upload", data=form)
        assert resp.status == 201, await resp.text()
    resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes(), session_id="list-b"))
    assert resp.status == 201
    listed = await (await client.get("/api/csv/sessions?limit=100")).json()
    rows = await client.app[STORE_KEY].list_sessions(after="", limit=100)
    assert listed == [SessionSchema().dump(row) for row in rows]
    assert [len(s["csv_files"]) for s in listed] == [len(files), 1, 0]
    assert {f["has_header"] for f in listed[0]["csv_files"]} == {True, False}
    for one in listed:  # and each equals what its own endpoint answers
        own = await client.get(f"/api/csv/sessions/{one['session_id']}")
        assert one == await own.json()
