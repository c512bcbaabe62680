"""Issue 20 over HTTP, on the real app: tables, queries (JSON and CSV), summaries kept in the
database and deleted with their file, read-only keys, limits, metrics and the access log.
On the suite's backends: SQLite + local in ``make test``, PostgreSQL (+ S3) in
``make test-postgres`` / ``make test-s3``."""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from csvstore.config import Settings
from csvstore.web.keys import STORE_KEY
from tests.conftest import Client, MakeClient, assert_problem, upload_form

SALES = b"region,amount,day\nnorth,10,2024-01-02\nsouth,5.5,2024-01-03\nnorth,2,2024-01-04\n"
QUERY = "/api/csv/sessions/s1/query"
# 10^10 pairs over small inputs: hours of CPU, little memory.
RUNAWAY = "SELECT count(*) FROM range(100000) a, range(100000) b WHERE (a.range * b.range) % 7 = 3"


async def _upload(client: Client, data: bytes, name: str, session_id: str = "s1") -> str:
    resp = await client.post(
        "/api/csv/upload", data=upload_form(data, filename=name, session_id=session_id)
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["file"]["id"])


async def _query(client: Client, sql: str, **body: Any) -> Any:
    resp = await client.post(QUERY, json={"sql": sql, **body})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def _summary_row(client: Client, file_id: str) -> tuple[str, str] | None:
    store = client.app[STORE_KEY]
    return await store.db.read(lambda x: store.repo.get_summary(x, file_id))


async def test_tables_are_the_session_files_named_in_upload_order(
    client: Client, session: str
) -> None:
    first = await _upload(client, SALES, "Sales 2024.csv")
    second = await _upload(client, b"a;b\n1;x\n", "sales-2024.csv")
    third = await _upload(client, b"x\n1\n2\n", "2023.csv")
    resp = await client.get("/api/csv/sessions/s1/tables")
    assert resp.status == 200
    tables = await resp.json()
    assert [(t["name"], t["file_id"]) for t in tables] == [
        ("sales_2024_csv", first),
        ("sales_2024_csv_2", second),
        ("t_2023_csv", third),
    ]
    assert [c["name"] for c in tables[0]["columns"]] == ["region", "amount", "day"]
    assert tables[0]["row_count"] == 3
    assert [c["name"] for c in tables[1]["columns"]] == ["a", "b"]  # its own delimiter
    assert tables[2]["row_count"] == 2


async def test_each_table_reads_its_file_in_the_recorded_dialect(
    client: Client, session: str
) -> None:
    # A title and a comment line before the header, notes after the table.
    data = (
        b"Report: cities\n# exported 2024-01-01\ncity;note;people\n"
        b'Oslo;"a;b";709000\nLima;plain;9750000\n\nSource: city registers\n'
    )
    await _upload(client, data, "cities.csv")
    tables = await (await client.get("/api/csv/sessions/s1/tables")).json()
    assert isinstance(tables, list), tables
    assert [c["name"] for c in tables[0]["columns"]] == ["city", "note", "people"]
    assert tables[0]["row_count"] == 2
    body = await _query(client, "SELECT * FROM cities_csv ORDER BY people")
    assert body["rows"] == [["Oslo", "a;b", 709000], ["Lima", "plain", 9750000]]


async def test_a_file_in_a_code_page_duckdb_lacks_is_read_as_utf8(
    client: Client, session: str, settings: Settings
) -> None:
    # cp1252 (Excel's export on Windows): DuckDB reads it only with an extension it cannot
    # download here, so the service hands it a UTF-8 copy (storage/cache.py).
    text = "city;note\nSão Paulo;“quoted”\nZürich;plain\n"
    file_id = await _upload(client, text.encode("cp1252"), "cities.csv")
    file = await (await client.get(f"/api/csv/files/{file_id}")).json()
    assert file["encoding"] == "cp1252"
    body = await _query(client, "SELECT * FROM cities_csv")
    assert body["rows"] == [["São Paulo", "“quoted”"], ["Zürich", "plain"]]
    summary = await (await client.get(f"/api/csv/files/{file_id}/summary")).json()
    assert summary["columns"][0]["max"] == "Zürich"
    copies = list((settings.data_dir / "query-cache").rglob("*.utf-8"))
    assert [p.name for p in copies] == [f"{file_id}.csv.utf-8"]
    assert (await client.delete(f"/api/csv/files/{file_id}")).status == 200
    assert not any((settings.data_dir / "query-cache").rglob("*.utf-8"))


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
async def test_utf16_files_with_either_bom_are_tables_with_their_rows(
    client: Client, session: str, codec: str
) -> None:
    bom = codecs.BOM_UTF16_LE if codec.endswith("le") else codecs.BOM_UTF16_BE
    text = "id,name\n1,Λεωνίδας\n2,Zoë\n"
    file_id = await _upload(client, bom + text.encode(codec), "wide.csv")
    body = await _query(client, "SELECT * FROM wide_csv ORDER BY id")
    assert body["columns"] == ["id", "name"]
    assert body["rows"] == [[1, "Λεωνίδας"], [2, "Zoë"]]
    summary = await (await client.get(f"/api/csv/files/{file_id}/summary")).json()
    assert [c["name"] for c in summary["columns"]] == ["id", "name"]
    assert summary["columns"][1]["max"] == "Λεωνίδας"


@pytest.mark.parametrize("data", [b"", b"\n\n", b"\r\n\r\n"])
async def test_a_file_without_a_table_lists_no_columns(
    client: Client, session: str, data: bytes
) -> None:
    """The profile says `columns: []`; DuckDB would invent `column0`, which /tables and the
    summary must not show."""
    file_id = await _upload(client, data, "nothing.csv")
    file = await (await client.get(f"/api/csv/files/{file_id}")).json()
    assert file["column_count"] == 0, file
    tables = await (await client.get("/api/csv/sessions/s1/tables")).json()
    assert [(t["name"], t["columns"], t["row_count"]) for t in tables] == [("nothing_csv", [], 0)]
    summary = await (await client.get(f"/api/csv/files/{file_id}/summary")).json()
    assert summary["columns"] == []


async def test_a_header_one_name_short_names_the_unnamed_column_and_keeps_the_rest_in_place(
    client: Client, session: str
) -> None:
    """R's write.table(sep=",") has no name over its row names; rows ending in a delimiter
    have no name over their last, empty column. DuckDB alone shifts every name by one."""
    r_table = b'"Weight","Feed","Pig"\n"1",26.5,NA,4601\n"2",27.6,5.2,4601\n"3",30,6,4602\n'
    file_id = await _upload(client, r_table, "dietox.csv")
    file = await (await client.get(f"/api/csv/files/{file_id}")).json()
    assert (file["columns"], file["column_count"]) == (["", "Weight", "Feed", "Pig"], 4)
    assert (file["row_count"], file["ragged_rows"], file["has_header"]) == (3, 0, True)
    rows = await (await client.get(f"/api/csv/files/{file_id}/rows")).json()
    assert rows["columns"] == ["", "Weight", "Feed", "Pig"]
    assert rows["rows"][0] == ["1", "26.5", "NA", "4601"]
    body = await _query(client, "SELECT column0, Weight, Pig FROM dietox_csv ORDER BY 1")
    assert body["rows"] == [[1, 26.5, 4601], [2, 27.6, 4601], [3, 30.0, 4602]]
    trailing = await _upload(client, b"a,b,c\n1,x,3,\n4,y,6,\n", "trailing.csv")
    file = await (await client.get(f"/api/csv/files/{trailing}")).json()
    assert (file["columns"], file["ragged_rows"]) == (["a", "b", "c", ""], 0)
    body = await _query(client, "SELECT a, b, c FROM trailing_csv ORDER BY a")
    assert body["rows"] == [[1, "x", 3], [4, "y", 6]]
    # R's write.csv names the corner "": the same columns, read the same way.
    r_csv = b'"","Weight","Feed"\n"1",26.5,NA\n"2",27.6,5.2\n'
    await _upload(client, r_csv, "written.csv")
    body = await _query(client, "SELECT column0, Weight FROM written_csv ORDER BY 1")
    assert body["rows"] == [[1, 26.5], [2, 27.6]]


async def test_unnamed_columns_after_blank_lines_wide_or_ragged_keep_every_name_in_place(
    client: Client, session: str
) -> None:
    # Blank lines before the header: read_csv's skip counts them (the profile does not).
    await _upload(client, b'\n\n"","x","y"\n"a",2,3\n"b",5,6\n"c",8,9\n', "blank.csv")
    body = await _query(client, "SELECT * FROM blank_csv")
    assert body["columns"] == ["column0", "x", "y"]
    assert body["rows"] == [["a", 2, 3], ["b", 5, 6], ["c", 8, 9]]
    await _upload(client, b'\n"x","y"\n"a",2,3\n"b",5,6\n', "short.csv")
    body = await _query(client, "SELECT * FROM short_csv")
    assert (body["columns"], body["rows"]) == (["column0", "x", "y"], [["a", 2, 3], ["b", 5, 6]])
    # Twelve columns: DuckDB pads a blank name's number to two digits, the profile's too.
    names = [f"c{i}" for i in range(1, 12)]
    rows = "".join(f'"r{r}",' + ",".join(str(r * i) for i in range(1, 12)) + "\n" for r in range(3))
    for name, head in (("wide_corner.csv", ['""', *names]), ("wide_short.csv", names)):
        await _upload(client, (",".join(head) + "\n" + rows).encode(), name)
        table = name.replace(".", "_")
        body = await _query(client, f"SELECT column00, c1, c11 FROM {table} ORDER BY c1")
        assert body["rows"] == [["r0", 0, 0], ["r1", 1, 11], ["r2", 2, 22]], name
    # One name short, and one row past the sample wider still: ragged, names in place.
    data = b'"x","y"\n' + b"".join(b'"%d",%d,%d\n' % (i, i * 10, i * 100) for i in range(60))
    file_id = await _upload(client, data + b'"60",1,2,3\n', "ragged.csv")
    file = await (await client.get(f"/api/csv/files/{file_id}")).json()
    assert (file["columns"], file["ragged_rows"]) == (["", "x", "y"], 1)
    body = await _query(client, "SELECT x, y FROM ragged_csv LIMIT 2")
    assert [[str(v) for v in row] for row in body["rows"]] == [["0", "0"], ["10", "100"]]


async def test_a_file_the_engine_cannot_read_is_a_422_that_names_no_server_path(
    client: Client, session: str, settings: Settings
) -> None:
    # Text, so stored (the contract), but no table DuckDB's sniffer can find.
    file_id = await _upload(client, b'{"a": 1, "b": [1,2,3]}\n', "json.csv")
    data_dir = str(settings.data_dir)
    summary = await assert_problem(await client.get(f"/api/csv/files/{file_id}/summary"), 422)
    assert summary["code"] == "query-unsupported-file"
    assert "json_csv" in summary["detail"]
    resp = await client.post(QUERY, json={"sql": "SELECT * FROM json_csv"})
    problem = await assert_problem(resp, 422)
    assert problem["code"] == "query-unsupported-file"
    tables = await (await client.get("/api/csv/sessions/s1/tables")).json()
    errors = [t["error"] for t in tables]
    assert errors
    assert errors[0]
    for text in (summary["detail"], problem["detail"], *errors):
        assert data_dir not in text
        assert "/uploads/" not in text
        assert "CREATE" not in text


async def test_a_query_copies_only_the_tables_it_reads(
    make_client: MakeClient, settings: Settings
) -> None:
    # cp1252 files are copied as UTF-8 on any storage (as every file is on S3): a cache that
    # holds one of the two answers a query over either, and /tables reads no file's bytes.
    client = await make_client(replace(settings, query_cache_size=1500))
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    rows = "".join(f"Zürich {i};{i}\n" for i in range(80))
    first = await _upload(client, f"city;n\n{rows}".encode("cp1252"), "a.csv")
    second = await _upload(client, f"town;n\n{rows}".encode("cp1252"), "b.csv")
    resp = await client.get("/api/csv/sessions/s1/tables")
    assert resp.status == 200, await resp.text()
    assert [t["row_count"] for t in await resp.json()] == [80, 80]
    for name, file_id in (("a_csv", first), ("b_csv", second), ("a_csv", first)):
        body = await _query(client, f"SELECT count(*), max(n) FROM {name}")
        assert body["rows"] == [[80, 79]]
        copies = list((settings.data_dir / "query-cache").rglob("*.utf-8"))
        assert [p.name for p in copies] == [f"{file_id}.csv.utf-8"]
    body = await assert_problem(await client.post(QUERY, json={"sql": "SELECT * FROM nope"}), 400)
    assert "nope" in body["detail"]
    both = "SELECT count(*) FROM a_csv JOIN b_csv USING (n)"
    body = await assert_problem(await client.post(QUERY, json={"sql": both}), 503)
    assert "cache" in body["detail"]


async def test_a_ragged_file_with_a_long_row_is_a_table_and_an_unreadable_one_no_blocker(
    client: Client, session: str
) -> None:
    # A row longer than the header: DuckDB's sniffer failed on it when told skip = 0.
    await _upload(client, b"a,b,c\n1,2\n3,4,5,6\n7,8,9\n", "ragged.csv")
    body = await _query(client, "SELECT * FROM ragged_csv")
    assert body["rows"] == [[1, 2, None, None], [3, 4, 5, 6], [7, 8, 9, None]]
    # A file DuckDB cannot read (an unterminated quote) is listed with its error; the
    # session's other tables stay listed and queryable.
    broken = await _upload(client, b'a,b\n1,"abc\n2,z\n', "broken.csv")
    resp = await client.get("/api/csv/sessions/s1/tables")
    assert resp.status == 200, await resp.text()
    tables = {t["name"]: t for t in await resp.json()}
    assert tables["ragged_csv"]["row_count"] == 3
    assert tables["ragged_csv"]["error"] is None
    assert tables["broken_csv"]["file_id"] == broken
    assert (tables["broken_csv"]["columns"], tables["broken_csv"]["row_count"]) == ([], 0)
    assert "Invalid Input Error" in tables["broken_csv"]["error"], tables
    assert (await _query(client, "SELECT count(*) FROM ragged_csv"))["rows"] == [[3]]


async def test_a_ragged_file_with_a_preamble_is_read_as_text_columns(
    client: Client, session: str
) -> None:
    # A title line, a blank line, then a table with a long and a short row: DuckDB's sniffer
    # gives up on it whatever it is told, so the table is read with the recorded dialect and
    # header as text columns, the long row's extra field in a column of its own.
    report = b"Report generated 2024-01-01\n\nid,name,value\n1,a,10\n2,b,20,extra\n3,c\n4,d,40\n"
    file_id = await _upload(client, report, "report.csv")
    stored = await (await client.get(f"/api/csv/files/{file_id}")).json()
    assert (stored["preamble_lines"], stored["columns"]) == (2, ["id", "name", "value"])
    body = await _query(client, "SELECT * FROM report_csv")
    assert body["columns"] == ["id", "name", "value", "column3"]
    assert body["types"] == ["VARCHAR"] * 4
    assert body["rows"] == [
        ["1", "a", "10", None],
        ["2", "b", "20", "extra"],
        ["3", "c", None, None],
        ["4", "d", "40", None],
    ]
    resp = await client.get("/api/csv/sessions/s1/tables")
    tables = {t["name"]: t for t in await resp.json()}
    assert tables["report_csv"]["error"] is None
    assert tables["report_csv"]["row_count"] == 4
    total = await _query(client, "SELECT sum(CAST(value AS INTEGER)) FROM report_csv")
    assert total["rows"] == [[70]]


async def test_a_query_answers_json_values(client: Client, session: str) -> None:
    await _upload(client, SALES, "sales.csv")
    body = await _query(
        client,
        "SELECT region, sum(amount) AS total, max(day) AS last FROM sales_csv "
        "GROUP BY region ORDER BY region",
    )
    assert body["columns"] == ["region", "total", "last"]
    assert body["types"][0] == "VARCHAR"
    assert body["rows"] == [["north", 12, "2024-01-04"], ["south", 5.5, "2024-01-03"]]
    assert body["row_count"] == 2
    assert body["truncated"] is False
    assert isinstance(body["elapsed_ms"], int | float)
    limited = await _query(client, "SELECT * FROM sales_csv", limit=2)
    assert limited["row_count"] == 2
    assert limited["truncated"] is True


async def test_accept_csv_streams_the_whole_result_up_to_max_rows(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, query_max_rows=50))
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    await _upload(client, b"n\n" + b"".join(b"%d\n" % i for i in range(80)), "numbers.csv")
    resp = await client.post(
        QUERY,
        json={"sql": "SELECT n, n * 2 AS twice FROM numbers_csv"},
        headers={"Accept": "text/csv"},
    )
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(await resp.text())))
    assert rows[0] == ["n", "twice"]
    assert rows[1:4] == [["0", "0"], ["1", "2"], ["2", "4"]]
    assert len(rows) == 1 + 50  # --query-max-rows
    # A refusal still comes as a problem, before any CSV is sent.
    resp = await client.post(
        QUERY, json={"sql": "COPY numbers_csv TO '/tmp/out.csv'"}, headers={"Accept": "text/csv"}
    )
    await assert_problem(resp, 400)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("text/csv", "text/csv"),
        ("TEXT/CSV", "text/csv"),  # media types are case-insensitive: was JSON
        ("application/json;q=0.1, text/csv;q=0.9", "text/csv"),  # the preferred one: was JSON
        ("text/csv;q=0", "application/json"),  # q=0 is "not acceptable": was CSV
        ("text/*", "text/csv"),
        ("text/csv, application/json", "application/json"),  # a tie keeps JSON
        ("*/*", "application/json"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"),
        ("", "application/json"),
    ],
)
async def test_accept_is_negotiated_by_quality(client: Client, accept: str, expected: str) -> None:
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    resp = await client.post(QUERY, json={"sql": "SELECT 1 AS x"}, headers={"Accept": accept})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/*')",
        "COPY sales_csv TO '/tmp/escape.csv'",
        "CREATE TABLE t AS SELECT 1",
        "INSTALL httpfs",
        "SET threads = 1",
        "SELECT getenv('HOME')",
        "SELECT 1; SELECT 2",
    ],
)
async def test_escapes_are_400_problems(client: Client, session: str, sql: str) -> None:
    await _upload(client, SALES, "sales.csv")
    body = await assert_problem(await client.post(QUERY, json={"sql": sql}), 400)
    assert body["code"] in {"query-refused", "query-invalid"}
    assert "/etc/passwd" not in body["detail"] or "read_csv" in sql


async def test_another_sessions_files_are_not_tables(client: Client, session: str) -> None:
    assert (await client.post("/api/csv/sessions", json={"session_id": "s2"})).status == 201
    await _upload(client, SALES, "secret.csv", session_id="s2")
    await _upload(client, SALES, "sales.csv")
    body = await assert_problem(
        await client.post(QUERY, json={"sql": "SELECT * FROM secret_csv"}), 400
    )
    assert body["code"] in {"query-refused", "query-invalid"}
    assert "secret_csv" in body["detail"]
    tables = await (await client.get("/api/csv/sessions/s1/tables")).json()
    assert [t["name"] for t in tables] == ["sales_csv"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "sql"),
        ({"sql": ""}, "sql"),
        ({"sql": "SELECT 1", "limit": 0}, "limit"),
        ({"sql": "SELECT 1", "limit": "10"}, "limit"),
        ({"sql": "SELECT 1", "limit": 10**6}, "limit"),
        ({"sql": "SELECT 1", "other": 1}, "other"),
        ({"sql": "SELECT '" + "x" * 5000 + "'"}, "sql"),
    ],
)
async def test_bad_query_bodies_name_the_field(
    client: Client, session: str, body: dict[str, Any], field: str
) -> None:
    problem = await assert_problem(await client.post(QUERY, json=body), 400)
    assert problem["code"] == "validation-failed"
    assert field in problem["errors"]


async def test_unknown_session_and_file_are_404(client: Client) -> None:
    resp = await client.post("/api/csv/sessions/nope/query", json={"sql": "SELECT 1"})
    assert (await assert_problem(resp, 404))["code"] == "unknown-session"
    resp = await client.get("/api/csv/sessions/nope/tables")
    assert (await assert_problem(resp, 404))["code"] == "unknown-session"
    resp = await client.get("/api/csv/files/nope/summary")
    assert (await assert_problem(resp, 404))["code"] == "unknown-file"


async def test_a_summary_is_computed_once_kept_and_deleted_with_its_file(
    client: Client, session: str
) -> None:
    file_id = await _upload(client, SALES, "sales.csv")
    assert await _summary_row(client, file_id) is None
    resp = await client.get(f"/api/csv/files/{file_id}/summary")
    assert resp.status == 200, await resp.text()
    first = await resp.json()
    by_name = {c["name"]: c for c in first["columns"]}
    assert list(by_name) == ["region", "amount", "day"]
    amount = by_name["amount"]
    assert (amount["count"], amount["nulls"], amount["min"], amount["max"]) == (3, 0, 2, 10)
    assert amount["mean"] == pytest.approx(17.5 / 3)
    assert by_name["region"]["top"][0] == {"value": "north", "count": 2}
    assert by_name["region"]["mean"] is None
    kept = await _summary_row(client, file_id)
    assert kept is not None
    assert kept[1] == first["computed_at"]
    second = await (await client.get(f"/api/csv/files/{file_id}/summary")).json()
    assert second == first  # from the database: the same computed_at
    assert (await client.delete(f"/api/csv/files/{file_id}")).status == 200
    assert await _summary_row(client, file_id) is None


async def test_a_kept_summary_goes_with_its_session(client: Client, session: str) -> None:
    # Without the engine: the row is written as the service writes it, the cascade removes it.
    file_id = await _upload(client, SALES, "sales.csv")
    store = client.app[STORE_KEY]
    await store.db.write(lambda x: store.repo.insert_summary(x, file_id, "[]", "2026-01-01"))
    assert await _summary_row(client, file_id) == ("[]", "2026-01-01")
    assert (await client.delete("/api/csv/sessions/s1")).status == 200
    assert await _summary_row(client, file_id) is None
    # A summary of a file that is gone is not kept.
    await store.db.write(lambda x: store.repo.insert_summary(x, file_id, "[]", "2026-01-01"))
    assert await _summary_row(client, file_id) is None


async def test_a_read_only_key_may_query_but_not_upload(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, api_keys="writer-key-123456,ro:reader-key-123456"))
    writer = {"Authorization": "Bearer writer-key-123456"}
    reader = {"Authorization": "Bearer reader-key-123456"}
    resp = await client.post("/api/csv/sessions", json={"session_id": "s1"}, headers=writer)
    assert resp.status == 201
    resp = await client.post(
        "/api/csv/upload", data=upload_form(SALES, filename="sales.csv"), headers=writer
    )
    assert resp.status == 201
    resp = await client.post(QUERY, json={"sql": "SELECT count(*) FROM sales_csv"}, headers=reader)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["rows"] == [[3]]
    resp = await client.post(QUERY, json={}, headers=reader)  # past the key check, to the schema
    assert (await assert_problem(resp, 400))["code"] == "validation-failed"
    resp = await client.post("/api/csv/sessions", json={"session_id": "s2"}, headers=reader)
    await assert_problem(resp, 403)
    resp = await client.post(QUERY, json={"sql": "SELECT 1"})
    await assert_problem(resp, 401)


async def test_a_runaway_query_stops_at_the_timeout_and_the_server_goes_on(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, query_timeout=1.0))
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    await _upload(client, SALES, "sales.csv")
    started = asyncio.get_running_loop().time()
    resp = await client.post(QUERY, json={"sql": RUNAWAY})
    body = await assert_problem(resp, 422)
    assert body["code"] == "query-timeout"
    assert asyncio.get_running_loop().time() - started < 10
    assert (await client.get("/healthz")).status == 200
    assert (await _query(client, "SELECT count(*) FROM sales_csv"))["rows"] == [[3]]


async def test_queries_are_counted_timed_and_logged(
    client: Client, session: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _upload(client, SALES, "sales.csv")
    with caplog.at_level(logging.INFO, logger="csvstore.access"):
        await _query(client, "SELECT 42 AS answer")
        await assert_problem(await client.post(QUERY, json={"sql": "COPY sales_csv TO 'x'"}), 400)
        await assert_problem(await client.post(QUERY, json={"sql": "SELEC"}), 400)
    lines = [r.getMessage() for r in caplog.records if r.name == "csvstore.access"]
    assert any("/query" in line and "sql='SELECT 42 AS answer'" in line for line in lines)
    records = [r for r in caplog.records if getattr(r, "sql", None) == "SELECT 42 AS answer"]
    assert records
    assert getattr(records[0], "status", None) == 200
    text = await (await client.get("/metrics")).text()
    assert 'csvstore_queries_total{outcome="ok"} 1.0' in text
    assert 'csvstore_queries_total{outcome="refused"} 2.0' in text
    assert "csvstore_query_duration_seconds_count 3.0" in text
    assert 'csvstore_queries_refused_total{reason="query_invalid"} 1.0' in text
    refused = [line for line in text.splitlines() if line.startswith("csvstore_queries_refused")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in refused if "_total" in line) == 2


async def test_queried_files_on_s3_are_cached_locally_and_leave_with_the_file(
    client: Client, session: str, settings: Settings
) -> None:
    file_id = await _upload(client, SALES, "sales.csv")
    assert (await _query(client, "SELECT count(*) FROM sales_csv"))["rows"] == [[3]]
    copies = list((settings.data_dir / "query-cache").rglob("*.csv"))
    if settings.uses_s3:
        assert [p.name for p in copies] == [f"{file_id}.csv"]
        assert copies[0].read_bytes() == SALES
    else:  # local storage: DuckDB reads the stored file itself, nothing is copied
        assert copies == []
    assert (await client.delete(f"/api/csv/files/{file_id}")).status == 200
    assert not any(Path(settings.data_dir / "query-cache").rglob("*.csv"))


async def test_another_sessions_file_is_unreachable_by_its_path(
    client: Client, session: str, settings: Settings
) -> None:
    assert (await client.post("/api/csv/sessions", json={"session_id": "s2"})).status == 201
    secret = await _upload(client, b"token\nsecret-value-123\n", "secret.csv", session_id="s2")
    await _upload(client, SALES, "sales.csv")
    # Queried once, so on S3 its copy sits in the same cache folder as s1's files.
    resp = await client.post("/api/csv/sessions/s2/query", json={"sql": "SELECT * FROM secret_csv"})
    assert resp.status == 200
    if settings.uses_s3:
        [path] = (settings.data_dir / "query-cache").rglob(f"{secret}.csv")
    else:
        path = settings.uploads_dir / f"{secret}.csv"
    assert path.read_bytes().startswith(b"token")
    for sql in (
        f"SELECT * FROM read_csv('{path}')",
        f"SELECT * FROM '{path}'",
        f"SELECT * FROM read_text('{path}')",
        f"SELECT * FROM glob('{path.parent}/*')",
    ):
        body = await assert_problem(await client.post(QUERY, json={"sql": sql}), 400)
        assert "secret-value-123" not in body["detail"], sql


async def test_past_the_concurrency_limit_a_query_is_429_with_retry_after(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, query_concurrency=1, query_timeout=3.0))
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    await _upload(client, SALES, "sales.csv")
    running = asyncio.ensure_future(client.post(QUERY, json={"sql": RUNAWAY}))
    for _ in range(100):  # until the runaway holds the one slot
        await asyncio.sleep(0.05)
        resp = await client.post(QUERY, json={"sql": "SELECT 1"})
        if resp.status == 429:
            break
        assert resp.status == 200
    body = await assert_problem(resp, 429)
    assert body["code"] == "query-busy"
    assert int(resp.headers["Retry-After"]) >= 1
    await assert_problem(await running, 422)
    assert (await _query(client, "SELECT count(*) FROM sales_csv"))["rows"] == [[3]]
    text = await (await client.get("/metrics")).text()
    assert 'csvstore_queries_refused_total{reason="query_busy"} 1.0' in text
    assert 'csvstore_queries_refused_total{reason="query_timeout"} 1.0' in text


async def test_concurrent_first_summaries_compute_once(client: Client, session: str) -> None:
    file_id = await _upload(client, SALES, "sales.csv")
    store = client.app[STORE_KEY]
    engine = store._engine
    assert engine is not None
    computed = 0
    summarize = engine.summarize

    async def counted(source: Any) -> Any:  # the real engine, counted
        nonlocal computed
        computed += 1
        return await summarize(source)

    engine.summarize = counted  # type: ignore[method-assign]
    answers = await asyncio.gather(
        *(client.get(f"/api/csv/files/{file_id}/summary") for _ in range(5))
    )
    bodies = [await answer.json() for answer in answers]
    assert computed == 1
    assert all(body == bodies[0] for body in bodies)


async def test_a_client_gone_mid_csv_frees_its_query_slot(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, query_concurrency=1, query_max_rows=10**8))
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    resp = await client.post(
        QUERY,
        json={"sql": "SELECT range, range * 2 AS twice FROM range(50000000)"},
        headers={"Accept": "text/csv"},
    )
    assert resp.status == 200
    assert (await resp.content.read(1000)).startswith(b"range,twice\r\n")
    resp.close()  # gone, with millions of rows still to come
    for _ in range(40):  # the slot comes back as soon as the server sees the client gone
        await asyncio.sleep(0.05)
        answer = await client.post(QUERY, json={"sql": "SELECT 1"})
        if answer.status != 429:
            break
    assert answer.status == 200, await answer.text()


async def test_a_backslash_escaped_export_reads_the_same_in_rows_and_queries(
    client: Client, session: str
) -> None:
    # MySQL's INTO OUTFILE ... ENCLOSED BY '"': \" inside fields, never "" (issue 17).
    data = (
        b'id,name,note\n1,"Ann","He said \\"hi\\", then left"\n2,"Bob","ends in \\""\n'
        b'3,"Cy","C:\\\\temp\\\\"\n4,"Dee","plain"\n'
    )
    file_id = await _upload(client, data, "mysql.csv")
    file = await (await client.get(f"/api/csv/files/{file_id}")).json()
    assert (file["escape_char"], file["row_count"], file["ragged_rows"]) == ("\\", 4, 0)
    listed = await (await client.get("/api/csv/sessions/s1")).json()
    assert listed["csv_files"][0]["escape_char"] == "\\"
    expected = [
        ["1", "Ann", 'He said "hi", then left'],
        ["2", "Bob", 'ends in "'],
        ["3", "Cy", "C:\\temp\\"],
        ["4", "Dee", "plain"],
    ]
    assert (await (await client.get(f"/api/csv/files/{file_id}/rows")).json())["rows"] == expected
    later = await (await client.get(f"/api/csv/files/{file_id}/rows?offset=2")).json()
    assert later["rows"] == expected[2:]
    body = await _query(client, "SELECT id, name, note FROM mysql_csv ORDER BY id")
    assert body["rows"] == [[int(row[0]), *row[1:]] for row in expected]
    content = await client.get(f"/api/csv/files/{file_id}/content")
    assert await content.read() == data  # stored as sent


async def test_a_rule_line_under_the_header_is_no_row_in_rows_or_queries(
    client: Client, session: str
) -> None:
    # sqlcmd -s"," -W: a rule under the header, a blank line and a row count after the table.
    data = (
        b"id,name,amount\r\n--,----,------\r\n1,Ann,10.5\r\n2,Bob,20\r\n3,Cy,7.25\r\n"
        b"\r\n(3 rows affected)\r\n"
    )
    file_id = await _upload(client, data, "sqlcmd.csv")
    file = await (await client.get(f"/api/csv/files/{file_id}")).json()
    assert (file["header_rule"], file["has_header"], file["columns"]) == (
        True, True, ["id", "name", "amount"],
    )  # fmt: skip
    assert (file["row_count"], file["ragged_rows"], file["footer_lines"]) == (3, 0, 2)
    listed = await (await client.get("/api/csv/sessions/s1")).json()
    assert listed["csv_files"][0]["header_rule"] is True
    rows = await (await client.get(f"/api/csv/files/{file_id}/rows")).json()
    assert rows["rows"] == [["1", "Ann", "10.5"], ["2", "Bob", "20"], ["3", "Cy", "7.25"]]
    later = await (await client.get(f"/api/csv/files/{file_id}/rows?offset=1&limit=1")).json()
    assert later["rows"] == [["2", "Bob", "20"]]
    tables = await (await client.get("/api/csv/sessions/s1/tables")).json()
    assert [(c["name"], c["type"]) for c in tables[0]["columns"]] == [
        ("id", "BIGINT"), ("name", "VARCHAR"), ("amount", "DOUBLE"),
    ]  # fmt: skip
    body = await _query(client, "SELECT sum(amount) AS total, count(*) AS n FROM sqlcmd_csv")
    assert body["rows"] == [[37.75, 3]]
    plain = await _upload(client, SALES, "sales.csv")
    assert (await (await client.get(f"/api/csv/files/{plain}")).json())["header_rule"] is False
