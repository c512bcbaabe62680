"""CSV as it comes from the wild (issue 17), through the API: each shape uploaded, its file
object as the upload answers it, as it is read back and listed, and its rows through /rows."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import FormData

from tests.conftest import Client, assert_problem, upload_form

WIDE_COLUMNS = 9_000
WIDE_ROWS = 5


def _wide() -> bytes:
    header = "id," + ",".join(str(100_000 + i) for i in range(WIDE_COLUMNS))
    rows = [
        f"id{r}," + ",".join("TRUE" if (r + i) % 3 else "FALSE" for i in range(WIDE_COLUMNS))
        for r in range(WIDE_ROWS)
    ]
    return ("\n".join([header, *rows]) + "\n").encode()


# name, bytes, what the file object says, the first rows /rows gives (their first 3 cells)
SHAPES: list[tuple[str, bytes, dict[str, Any], list[list[str]]]] = [
    (
        "sqlcmd -W: a rule line under the header",
        b"id,name\r\n--,----\r\n1,Ann\r\n2,Bob\r\n\r\n(2 rows affected)\r\n",
        {"header_rule": True, "columns": ["id", "name"], "row_count": 2, "footer_lines": 2},
        [["1", "Ann"], ["2", "Bob"]],
    ),
    (
        "preamble",
        b"# clean this data!\nReport generated 2024-01-01\n\nid,neighbor_id,name,population\n"
        b"1,Ireland,Britain,67\n2,3,France,67\n3,22,Germany,83\n",
        {"preamble_lines": 3, "has_header": True, "comment_char": "#", "ragged_rows": 0,
         "columns": ["id", "neighbor_id", "name", "population"], "column_count": 4,
         "row_count": 3},
        [["1", "Ireland", "Britain"], ["2", "3", "France"], ["3", "22", "Germany"]],
    ),
    (
        "spreadsheet title and key: value lines",
        b"Source: statistics office\r\nUnit: thousands\r\nTable 4,,,\r\n"
        b"region,year,men,women\r\nNorth,2020,10,11\r\nSouth,2020,12,13\r\n",
        {"preamble_lines": 3, "comment_char": None, "columns": ["region", "year", "men", "women"],
         "row_count": 2, "ragged_rows": 0},
        [["North", "2020", "10"], ["South", "2020", "12"]],
    ),
    (
        "a title whose commas are its words, over a table as wide",
        b"Monthly sales, 2023\nmonth,sales\nJan,100\nFeb,120\nMar,90\n",
        {"preamble_lines": 1, "has_header": True, "columns": ["month", "sales"],
         "row_count": 3, "ragged_rows": 0},
        [["Jan", "100"], ["Feb", "120"], ["Mar", "90"]],
    ),
    (
        "a spaced header over rows of text only",
        b"Country, Capital\nFrance,Paris\nGermany,Berlin\nItaly,Rome\nSpain,Madrid\n",
        {"preamble_lines": 0, "columns": ["Country", " Capital"], "row_count": 4},
        [["France", "Paris"], ["Germany", "Berlin"], ["Italy", "Rome"]],
    ),
    (
        "a header spaced after its commas, over rows that are not",
        b"Name, Age\nBob,42\nAnn,31\nCy,27\n",
        {"preamble_lines": 0, "has_header": True, "columns": ["Name", " Age"], "row_count": 3},
        [["Bob", "42"], ["Ann", "31"], ["Cy", "27"]],
    ),
    (
        "comment lines among the rows",
        b"id,name\n1,english\n# it's a comment!\n2,chinese\n",
        {"preamble_lines": 0, "comment_char": "#", "row_count": 2, "ragged_rows": 0},
        [["1", "english"], ["2", "chinese"]],
    ),
    (
        "9,000 columns",
        _wide(),
        {"has_header": True, "column_count": WIDE_COLUMNS + 1, "row_count": WIDE_ROWS,
         "ragged_rows": 0, "preamble_lines": 0},
        [["id0", "FALSE", "TRUE"], ["id1", "TRUE", "TRUE"], ["id2", "TRUE", "FALSE"]],
    ),
    (
        "duplicate names",
        b"id,name,name\n1,ann,bob\n2,cy,dee\n",
        {"has_header": True, "columns": ["id", "name", "name"], "duplicate_columns": ["name"],
         "row_count": 2},
        [["1", "ann", "bob"], ["2", "cy", "dee"]],
    ),
    (
        "space after the delimiter",
        b'id, name, city\n1, "Smith, J", "Oslo"\n2, "Doe, A", Rome\n',
        {"skip_initial_space": True, "columns": ["id", "name", "city"], "column_count": 3,
         "row_count": 2, "ragged_rows": 0},
        [["1", "Smith, J", "Oslo"], ["2", "Doe, A", "Rome"]],
    ),
    (
        "cp1252 with a title: names re-read past the preamble",
        "Rapport: ventes été\n\nnom;prix;qté\ncafé;3,50;1\nthé;2;3\n".encode("cp1252"),
        {"encoding": "cp1252", "preamble_lines": 2, "columns": ["nom", "prix", "qté"],
         "row_count": 2},
        [["café", "3,50", "1"], ["thé", "2", "3"]],
    ),
    (
        "Excel's sep= line",
        b"sep=;\r\nname;amount\r\nann;3,5\r\nbob;4\r\n",
        {"delimiter": ";", "preamble_lines": 1, "columns": ["name", "amount"], "row_count": 2},
        [["ann", "3,5"], ["bob", "4"]],
    ),
    (
        "colon-delimited",
        b"id:name:qty\n1:apple:3\n2:pear:4\n3:fig:5\n",
        {"delimiter": ":", "columns": ["id", "name", "qty"], "row_count": 3, "ragged_rows": 0,
         "preamble_lines": 0, "skip_initial_space": False, "duplicate_columns": []},
        [["1", "apple", "3"], ["2", "pear", "4"], ["3", "fig", "5"]],
    ),
    (
        "one column of times: the colons are not delimiters",
        b"time\n05:40\n21:30\n11:02:03\n07:15\n",
        {"columns": ["time"], "column_count": 1, "has_header": True, "preamble_lines": 0,
         "row_count": 4, "ragged_rows": 0},
        [["05:40"], ["21:30"], ["11:02:03"]],
    ),
    (
        "a wide time series: years name the columns",
        b"Country,1990,1991,1992,1993\nNorway,4.25,4.31,4.5,4.6\nSweden,8.56,8.6,8.67,8.7\n"
        b"Chile,13.2,13.4,13.6,13.8\n",
        {"has_header": True, "columns": ["Country", "1990", "1991", "1992", "1993"],
         "row_count": 3},
        [["Norway", "4.25", "4.31"], ["Sweden", "8.56", "8.6"], ["Chile", "13.2", "13.4"]],
    ),
    (
        "numbers in a first row are data, years or not",
        b"1999,250,3.5\n2500,120,4.5\n350,80,1.25\n",
        {"has_header": False, "row_count": 3},
        [["1999", "250", "3.5"], ["2500", "120", "4.5"], ["350", "80", "1.25"]],
    ),
    (
        "comment lines, one of them a commented-out row",
        b"# exported by hand\n# do not edit\na;b\n# a note\n1;3\n# 20;7\n6;7\n"
        + b"".join(b"# note %d\n%d;%d\n" % (i, i, i) for i in range(12)),
        {"comment_char": "#", "row_count": 14, "ragged_rows": 0, "columns": ["a", "b"],
         "preamble_lines": 2},
        [["1", "3"], ["6", "7"], ["0", "0"]],
    ),
    (
        "R's write.csv: an empty corner above the row names",
        b'"","name","city"\n"1","Ann","Oslo"\n"2","Bob","Rome"\n"3","Cy","Lima"\n',
        {"has_header": True, "columns": ["", "name", "city"], "row_count": 3},
        [["1", "Ann", "Oslo"], ["2", "Bob", "Rome"], ["3", "Cy", "Lima"]],
    ),
]  # fmt: skip


def _form(data: bytes, **fields: str) -> FormData:
    form = upload_form(data)
    for name, value in fields.items():
        form.add_field(name, value)
    return form


@pytest.mark.parametrize(("name", "data", "expected", "rows"), SHAPES, ids=[s[0] for s in SHAPES])
async def test_shape_through_upload_and_rows(
    client: Client,
    session: str,
    name: str,
    data: bytes,
    expected: dict[str, Any],
    rows: list[list[str]],
) -> None:
    # strict=true: a file read from its real header has no ragged rows, so it is taken.
    resp = await client.post("/api/csv/upload", data=_form(data, strict="true"))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    for field, value in expected.items():
        assert file[field] == value, (field, file[field])
    again = await (await client.get(f"/api/csv/files/{file['id']}")).json()
    assert again == file
    listed = await (await client.get(f"/api/csv/sessions/{session}")).json()
    assert listed["csv_files"] == [file]
    page = await (await client.get(f"/api/csv/files/{file['id']}/rows?limit=3")).json()
    assert [row[:3] for row in page["rows"]] == rows[:3]
    assert page["columns"] == file["columns"]
    # From a later offset too: the counter that finds row 1 reads the file's dialect.
    later = await (await client.get(f"/api/csv/files/{file['id']}/rows?offset=1&limit=1")).json()
    assert [row[:3] for row in later["rows"]] == rows[1:2]


async def test_session_listing_carries_the_dialect_fields(client: Client, session: str) -> None:
    data = b'# exported\nid, name\n1, "a, b"\n2, "c"\n'
    assert (await client.post("/api/csv/upload", data=upload_form(data))).status == 201
    listing = await (await client.get("/api/csv/sessions")).json()
    (file,) = (
        listing["sessions"][0]["csv_files"] if "sessions" in listing else listing[0]["csv_files"]
    )
    assert file["preamble_lines"] == 1
    assert file["skip_initial_space"] is True
    assert file["comment_char"] == "#"
    assert file["duplicate_columns"] == []


_STATES = "".join(f'State {i},S{i},{1000 + i},"{i},{i:03d}"\n' for i in range(40))
GOVERNMENT_EXPORT = (
    "Beneficiaries by state during FY 2010,,,\nstate,code,students,total\n" + _STATES
    + "\nSource: Department of Veterans Affairs, 2011\n"
    "Note: state statistics may include individuals counted in more than one state.\n"
).encode()  # fmt: skip


async def test_footer_notes_are_not_rows(client: Client, session: str) -> None:
    # strict=true: the notes would be ragged rows if they were counted.
    resp = await client.post("/api/csv/upload", data=_form(GOVERNMENT_EXPORT, strict="true"))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert (file["preamble_lines"], file["footer_lines"]) == (1, 3)
    assert (file["row_count"], file["ragged_rows"]) == (40, 0)
    assert file["columns"] == ["state", "code", "students", "total"]
    assert await (await client.get(f"/api/csv/files/{file['id']}")).json() == file
    listed = await (await client.get(f"/api/csv/sessions/{session}")).json()
    assert listed["csv_files"] == [file]
    rows_url = f"/api/csv/files/{file['id']}/rows"
    whole = await (await client.get(f"{rows_url}?limit=1000")).json()
    assert len(whole["rows"]) == 40
    assert whole["rows"][-1] == ["State 39", "S39", "1039", "39,039"]
    assert whole["next_offset"] is None
    end = await (await client.get(f"{rows_url}?offset=38&limit=10")).json()
    assert [row[0] for row in end["rows"]] == ["State 38", "State 39"]
    assert end["next_offset"] is None
    exact = await (await client.get(f"{rows_url}?offset=36&limit=4")).json()
    assert exact["next_offset"] is None
    past = await (await client.get(f"{rows_url}?offset=40")).json()
    assert (past["rows"], past["next_offset"]) == ([], None)


@pytest.mark.parametrize(
    "end", [b"\x1a", b"   \r\n\t\r\n"], ids=["DOS end-of-file mark", "lines of spaces"]
)
async def test_a_dos_end_mark_or_lines_of_spaces_end_the_table(
    client: Client, session: str, end: bytes
) -> None:
    # An old DOS export ends in Ctrl-Z; editors leave lines of spaces. strict=true: either
    # would be a ragged row if it were counted.
    data = b"id,name\r\n1,ann\r\n2,bob\r\n" + end
    resp = await client.post("/api/csv/upload", data=_form(data, strict="true"))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert (file["row_count"], file["ragged_rows"]) == (2, 0)
    assert file["footer_lines"] == max(1, end.count(b"\n"))
    page = await (await client.get(f"/api/csv/files/{file['id']}/rows")).json()
    assert (page["rows"], page["next_offset"]) == ([["1", "ann"], ["2", "bob"]], None)
    query = {"sql": "SELECT count(*) AS n, max(name) AS last FROM data_csv"}
    resp = await client.post(f"/api/csv/sessions/{session}/query", json=query)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["rows"] == [[2, "bob"]]


async def test_ragged_rows_at_the_end_stay_rows(client: Client, session: str) -> None:
    data = b"id,name,score\n1,ann,3\n2,bob,4\n3,cy,5\n4,dee\n5\n6,eve,7,late\n"
    resp = await client.post("/api/csv/upload", data=upload_form(data))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert (file["row_count"], file["ragged_rows"], file["footer_lines"]) == (6, 3, 0)
    page = await (await client.get(f"/api/csv/files/{file['id']}/rows?offset=3")).json()
    assert page["rows"] == [["4", "dee"], ["5"], ["6", "eve", "7", "late"]]
    assert page["next_offset"] is None
    refused = await client.post("/api/csv/upload", data=_form(data, strict="true"))
    body = await assert_problem(refused, 400)
    assert "3 row(s)" in body["detail"]


async def test_footer_after_many_rows_through_rows_at_a_deep_offset(
    client: Client, session: str
) -> None:
    # Past the sniffed sample and two checkpoints: the footer is judged on the stream's end.
    body = "".join(f"{i},{i * 7},x{i}\n" for i in range(25_000))
    data = f"id,value,label\n{body}\nSource: generated for the test\n".encode()
    resp = await client.post("/api/csv/upload", data=_form(data, strict="true"))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert (file["row_count"], file["ragged_rows"], file["footer_lines"]) == (25_000, 0, 2)
    page = await (await client.get(f"/api/csv/files/{file['id']}/rows?offset=24998")).json()
    assert page["rows"] == [["24998", "174986", "x24998"], ["24999", "174993", "x24999"]]
    assert page["next_offset"] is None


async def test_a_rarer_delimiter_must_fit_to_beat_a_main_one_that_nearly_does(
    client: Client, session: str
) -> None:
    # Backslash-escaped quotes split a sixth of the records at ",", and the text holds ":"
    # in every record: the wide "," table is the file, not a two-column ":" split.
    # "," fits 34 records of 40, ":" 35: neither fits (90 %).
    data = b"".join(
        b'%d,7,"CONT: line %d \\"quoted, here\\" x",y\n' % (i, i)
        if i % 6 == 0
        else b'%d,7,"CONT: line %d DATE: 1",y\n' % (i, i)
        if i % 7 == 0
        else b'%d,7,"CONT: line %d plain",y\n' % (i, i)
        for i in range(1, 41)
    )
    resp = await client.post("/api/csv/upload", data=upload_form(data))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert (file["delimiter"], file["column_count"], file["row_count"]) == (",", 4, 40)


async def test_a_comment_before_a_header_wider_than_its_rows_stays_a_comment(
    client: Client, session: str
) -> None:
    # The rows are narrower than the header, so the table is taken from the first record:
    # a "#" line, which is still the file's comment, not its header.
    data = b"# this file has a bunch of gunk at the top\none,two,three,four\n1,a,alice\n2,b,bob\n"
    resp = await client.post("/api/csv/upload", data=upload_form(data))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert (file["comment_char"], file["column_count"], file["row_count"]) == ("#", 4, 2)
