"""Issue 20's engine without HTTP: table names, the recorded dialect, JSON values, CSV
results, summaries, and the limits (timeout by interrupt, memory, rows, concurrency)."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from pathlib import Path
from typing import Any

import pytest

from csvstore.errors import QueryBusy, QueryTimeout, QueryTooLarge, QueryUnsupportedFile
from csvstore.model import StoredFile
from csvstore.query.engine import (
    Column,
    Dialect,
    QueryEngine,
    QueryLimits,
    TableSource,
    table_names,
)
from csvstore.query.sandbox import text_columns

LIMITS = QueryLimits(timeout_s=5, memory_bytes=64 << 20, max_rows=1000, concurrency=2)
RUNAWAY = "SELECT count(*) FROM range(1000000) a, range(1000000) b"


def _source(
    path: Path, name: str = "data.csv", at: str = "2026-01-01", **kw: object
) -> TableSource:
    return TableSource(f"id-{name}-{at}", name, at, str(path), Dialect(**kw))  # type: ignore[arg-type]


def _write(tmp_path: Path, text: str, name: str = "data.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_table_names_follow_the_rule_and_clashes_go_by_upload_order(tmp_path: Path) -> None:
    def src(name: str, at: str) -> TableSource:
        return TableSource(name, name, at, str(tmp_path / name), Dialect())

    sources = [
        src("Sales 2024.CSV", "2026-01-03"),
        src("sales-2024.csv", "2026-01-01"),
        src("2024.csv", "2026-01-02"),
        src("sales_2024_csv", "2026-01-04"),
        src("Été.csv", "2026-01-05"),
        src("sqlite_master", "2026-01-06"),
    ]
    # The second upload of sales_2024_csv is the one listed first: order is upload order.
    assert table_names(sources) == [
        "sales_2024_csv_2",
        "sales_2024_csv",
        "t_2024_csv",
        "sales_2024_csv_3",
        "_t__csv",
        "sqlite_master_2",  # a system view's name would be ambiguous
    ]


async def test_tables_read_the_recorded_dialect_preamble_and_encoding(tmp_path: Path) -> None:
    text = (
        "Export of 2026-01-01\nby the shop\n"
        "Stadt;Einwohner;Seit\n# a comment line\n"
        "München;1512491;1158-06-14\nKöln;1084831;0050-01-01\n"
    )
    path = _write(tmp_path, text, "städte.csv", "latin-1")
    dialect: dict[str, Any] = {
        "delimiter": ";",
        "skip": 2,
        "encoding": "iso-8859-1",
        "comment": "#",
    }
    engine = QueryEngine(LIMITS)
    try:
        [info] = await engine.tables([_source(path, "Städte.csv", **dialect)])
        assert info.name == "st_dte_csv"
        assert info.columns == [
            Column("Stadt", "VARCHAR"),
            Column("Einwohner", "BIGINT"),
            Column("Seit", "DATE"),
        ]
        assert info.row_count == 2
        result = await engine.run(
            [_source(path, "Städte.csv", **dialect)], "SELECT * FROM st_dte_csv ORDER BY 2", 10
        )
        assert result.rows == [["Köln", 1084831, "0050-01-01"], ["München", 1512491, "1158-06-14"]]
    finally:
        await engine.close()


async def test_no_header_footer_and_the_profile_of_a_stored_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "1|a\n2|b\n3|c\nTotal: 3 rows\n")
    stored = StoredFile(
        id="f1", session_pk="s", filename="x", original_filename="nums.txt", file_size=1,
        content_type="text/csv", file_path="k", created_at="2026-01-01", delimiter="|",
        quotechar='"', has_header=False, row_count=3, footer_lines=1, encoding="ascii",
    )  # fmt: skip
    source = TableSource.of(stored, str(path))
    engine = QueryEngine(LIMITS)
    try:
        result = await engine.run([source], "SELECT * FROM nums_txt", 10)
        assert result.columns == ["column0", "column1"]
        assert result.rows == [[1, "a"], [2, "b"], [3, "c"]]
    finally:
        await engine.close()


async def test_an_encoding_duckdb_cannot_decode_is_a_clear_422(tmp_path: Path) -> None:
    path = _write(tmp_path, "a\n€\n", encoding="cp1252")
    engine = QueryEngine(LIMITS)
    try:
        with pytest.raises(QueryUnsupportedFile) as caught:
            await engine.run([_source(path, encoding="cp1252")], "SELECT * FROM data_csv", 10)
        assert caught.value.status == 422
        assert "cp1252" in caught.value.detail
    finally:
        await engine.close()


async def test_values_come_back_as_json_numbers_strings_booleans_and_null(tmp_path: Path) -> None:
    path = _write(tmp_path, "d,t,n,x,b\n2024-02-29,2024-02-29 13:45:00,1.50,12,true\n")
    engine = QueryEngine(LIMITS)
    sql = (
        "SELECT d, t, n, x, b, NULL AS z, 'NaN'::DOUBLE AS nan, 'inf'::DOUBLE AS inf,"
        " -'inf'::DOUBLE AS ninf, 170141183460469231731687303715884105727::HUGEINT AS huge,"
        " 10::DECIMAL(4, 1) AS dec,"
        " TIMESTAMPTZ '2024-01-01 10:00:00+02' AS tz, TIME '10:30:00' AS tm,"
        " INTERVAL 90 MINUTE AS iv, [1, 2] AS l, {'k': DATE '2024-01-01'} AS s,"
        " 'ab'::BLOB AS bl FROM data_csv"
    )
    try:
        result = await engine.run([_source(path)], sql, 10)
        assert result.types[:5] == ["DATE", "TIMESTAMP", "DOUBLE", "BIGINT", "BOOLEAN"]
        assert result.rows == [
            [
                "2024-02-29",
                "2024-02-29T13:45:00",
                1.5,
                12,
                True,
                None,
                "NaN",
                "Infinity",
                "-Infinity",
                "170141183460469231731687303715884105727",  # beyond 64 bits: exact, as a string
                10,
                "2024-01-01T08:00:00+00:00",
                "10:30:00",
                "P0DT1H30M0S",
                [1, 2],
                {"k": "2024-01-01"},
                "YWI=",
            ]
        ]
        assert result.truncated is False
        assert result.elapsed_ms > 0
    finally:
        await engine.close()


async def test_json_rows_stop_at_the_limit_and_at_max_rows(tmp_path: Path) -> None:
    engine = QueryEngine(LIMITS)
    try:
        result = await engine.run([], "SELECT * FROM range(10)", 3)
        assert (result.rows, result.row_count, result.truncated) == ([[0], [1], [2]], 3, True)
        exact = await engine.run([], "SELECT * FROM range(3)", 3)
        assert exact.truncated is False
        most = await engine.run([], "SELECT * FROM range(5000)", 10**9)
        assert (most.row_count, most.truncated) == (LIMITS.max_rows, True)
    finally:
        await engine.close()


async def test_csv_streams_in_batches_bounded_by_max_rows(tmp_path: Path) -> None:
    engine = QueryEngine(QueryLimits(5, 64 << 20, max_rows=25_000, concurrency=1))
    try:
        chunks = [
            c
            async for c in engine.stream_csv(
                [], "SELECT range AS n, 'a,b' AS s FROM range(1000000)"
            )
        ]
        assert len(chunks) == 3  # 10,000 rows a chunk: the result is never held whole
        rows = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
        assert rows[0] == ["n", "s"]
        assert rows[1] == ["0", "a,b"]
        assert len(rows) == 1 + 25_000
        empty = [c async for c in engine.stream_csv([], "SELECT 1 AS one WHERE false")]
        assert empty == [b"one\r\n"]
    finally:
        await engine.close()


async def test_summary_of_one_file(tmp_path: Path) -> None:
    lines = ["n,word,day"] + [
        f"{i % 4},{'x' if i % 3 else 'y'},2024-01-0{1 + i % 2}" for i in range(12)
    ]
    lines.append(",,")
    path = _write(tmp_path, "\n".join(lines) + "\n")
    engine = QueryEngine(LIMITS)
    try:
        n, word, day = await engine.summarize(_source(path))
    finally:
        await engine.close()
    assert (n.name, n.type, n.count, n.nulls, n.approx_distinct) == ("n", "BIGINT", 12, 1, 4)
    assert (n.min, n.max, n.mean) == (0, 3, 1.5)
    assert n.std == pytest.approx(1.1677, abs=1e-3)
    assert sorted(n.top) == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert (word.type, word.min, word.max, word.mean, word.std) == ("VARCHAR", "x", "y", None, None)
    assert word.top == [("x", 8), ("y", 4)]
    assert (day.type, day.min, day.max, day.nulls) == ("DATE", "2024-01-01", "2024-01-02", 1)
    assert sorted(day.top) == [("2024-01-01", 6), ("2024-01-02", 6)]


async def test_a_runaway_cross_join_is_interrupted_at_the_timeout() -> None:
    engine = QueryEngine(QueryLimits(1.0, 64 << 20, 1000, concurrency=1))
    try:
        started = time.monotonic()
        with pytest.raises(QueryTimeout) as caught:
            await engine.run([], RUNAWAY, 10)
        took = time.monotonic() - started
        assert 1.0 <= took < 2.5, took
        assert caught.value.status == 422
        assert "1 s" in caught.value.detail
        # The slot is free again and the engine healthy.
        assert (await engine.run([], "SELECT 42", 1)).rows == [[42]]
        # A CSV result is bounded by the same DuckDB time.
        with pytest.raises(QueryTimeout):
            [c async for c in engine.stream_csv([], RUNAWAY)]
    finally:
        await engine.close()


async def test_memory_beyond_the_limit_is_a_4xx() -> None:
    engine = QueryEngine(QueryLimits(10, 32 << 20, 1000, concurrency=1))
    try:
        with pytest.raises(QueryTooLarge) as caught:
            await engine.run([], "SELECT list(range) FROM range(50000000)", 1)
        assert caught.value.status == 422
        assert str(32 << 20) in caught.value.detail
        assert (await engine.run([], "SELECT 1", 1)).rows == [[1]]
    finally:
        await engine.close()


async def test_a_result_past_the_memory_limit_as_json_is_a_4xx() -> None:
    """DuckDB holds the list within its limit; as Python values and JSON it is bigger, and
    that is refused too (the server's memory, not DuckDB's, would carry it)."""
    engine = QueryEngine(QueryLimits(10, 32 << 20, 1000, concurrency=1))
    try:
        with pytest.raises(QueryTooLarge) as caught:
            await engine.run([], "SELECT list(range / 7) FROM range(1000000)", 1)
        assert "as JSON" in caught.value.detail
        assert str(8 << 20) in caught.value.detail
        many = await engine.run([], "SELECT range, 'x' FROM range(100000)", 1000)
        assert (many.row_count, many.truncated) == (1000, True)
    finally:
        await engine.close()


async def test_more_queries_than_the_concurrency_are_refused_and_the_loop_stays_free() -> None:
    engine = QueryEngine(QueryLimits(1.5, 64 << 20, 1000, concurrency=2))
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        slow = [asyncio.create_task(engine.run([], RUNAWAY, 1)) for _ in range(2)]
        await asyncio.sleep(0.3)
        with pytest.raises(QueryBusy) as caught:
            await engine.run([], "SELECT 1", 1)
        assert caught.value.status == 429
        assert caught.value.response_headers() == {"Retry-After": "1"}
        for task in slow:
            with pytest.raises(QueryTimeout):
                await task
        assert (await engine.run([], "SELECT 1", 1)).rows == [[1]]
    finally:
        tick.cancel()
        await engine.close()
    # Two queries busy in DuckDB for 1.5 s: the event loop never waited on them.
    assert len(gaps) > 50
    assert max(gaps) < 0.2, max(gaps)


async def test_a_cancelled_query_is_interrupted_and_frees_its_slot() -> None:
    engine = QueryEngine(QueryLimits(30, 64 << 20, 1000, concurrency=1))
    try:
        task = asyncio.create_task(engine.run([], RUNAWAY, 1))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 2
        assert (await engine.run([], "SELECT 1", 1)).rows == [[1]]
    finally:
        await engine.close()


async def test_a_stream_left_early_frees_its_slot() -> None:
    engine = QueryEngine(QueryLimits(30, 64 << 20, 10**6, concurrency=1))
    try:
        stream = engine.stream_csv([], "SELECT * FROM range(100000)")
        assert (await anext(stream)).startswith(b"range\r\n0\r\n")
        await stream.aclose()  # type: ignore[attr-defined]
        assert (await engine.run([], "SELECT 1", 1)).rows == [[1]]
    finally:
        await engine.close()


async def test_a_database_is_reused_only_for_the_same_files(tmp_path: Path) -> None:
    a, b = _write(tmp_path, "x\n1\n", "a.csv"), _write(tmp_path, "x\n2\n", "b.csv")
    engine = QueryEngine(QueryLimits(1.0, 64 << 20, 1000, concurrency=2))

    def allowed() -> dict[tuple[str, ...], str]:
        found = {}
        for key, box in engine._idle.items():
            row = box.con.execute(
                "SELECT value FROM duckdb_settings() WHERE name = 'allowed_paths'"
            ).fetchone()
            found[key] = str(row[0]) if row else ""
        return found

    try:
        first = await engine.run([_source(a, "a.csv")], "SELECT x FROM a_csv", 1)
        again = await engine.run([_source(a, "a.csv")], "SELECT x FROM a_csv", 1)
        other = await engine.run([_source(b, "a.csv")], "SELECT x FROM a_csv", 1)
        assert (first.rows, again.rows, other.rows) == ([[1]], [[1]], [[2]])
        # Each kept database may read exactly the files it was locked to.
        assert allowed() == {(str(a),): f"[{a}]", (str(b),): f"[{b}]"}
        with pytest.raises(QueryTimeout):
            await engine.run([_source(a, "a.csv")], RUNAWAY, 1)
        # An interrupted database is not kept: its files' entry is gone.
        assert (str(a),) not in engine._idle
    finally:
        await engine.close()


async def test_a_preamble_with_comment_lines_skips_exactly_the_preamble(tmp_path: Path) -> None:
    # DuckDB's skip does not count comment lines: skip=2 ate the header (q-api's report: the
    # table's columns were the first data row). Failed before: columns Oslo, ..., 1 row.
    text = (
        "Report: cities\n# exported 2024-01-01\ncity;note;people\n"
        'Oslo;"<b>not bold</b>";709000\nLima;plain;9750000\n\nSource: city registers\n'
    )
    path = _write(tmp_path, text, "cities.csv")
    dialect: dict[str, Any] = {
        "delimiter": ";", "skip": 2, "comment": "#", "footer_lines": 2, "row_count": 2,
    }  # fmt: skip
    blank = _write(tmp_path, "Report\n\n# c\n\ncity;people\nOslo;1\nLima;2\n", "blank.csv")
    engine = QueryEngine(LIMITS)
    try:
        [info, other] = await engine.tables(
            [
                _source(path, "cities.csv", **dialect),
                _source(blank, "blank.csv", "2026-01-02", delimiter=";", skip=4, comment="#"),
            ]
        )
        assert [c.name for c in info.columns] == ["city", "note", "people"]
        assert info.row_count == 2
        assert ([c.name for c in other.columns], other.row_count) == (["city", "people"], 2)
    finally:
        await engine.close()


async def test_a_summary_has_its_own_time_limit(tmp_path: Path) -> None:
    # Two scans of a 1 GiB file took 23 s here: under the 10 s query timeout, every large
    # file's summary would be a 422. Failed before: the summary ran under timeout_s.
    # Large enough that DuckDB is still scanning when the interrupts come.
    lines = ["n,word"] + [f"{i},w{i % 97}" for i in range(400_000)]
    path = _write(tmp_path, "\n".join(lines) + "\n")
    patient = QueryEngine(QueryLimits(0.001, 64 << 20, 1000, 1, summary_timeout_s=60))
    hasty = QueryEngine(QueryLimits(60, 64 << 20, 1000, 1, summary_timeout_s=0.001))
    try:
        n, _ = await patient.summarize(_source(path))
        assert n.count == 400_000
        with pytest.raises(QueryTimeout):
            await patient.run([_source(path)], RUNAWAY.replace("range(1000000) a", "data_csv"), 1)
        with pytest.raises(QueryTimeout):
            await hasty.summarize(_source(path))
    finally:
        await patient.close()
        await hasty.close()


async def test_an_interrupt_that_lands_between_duckdb_steps_is_repeated() -> None:
    # A 1 ms limit expires while the SQL is being checked, before DuckDB runs anything: that
    # interrupt is lost. Failed before (one interrupt only): the runaway ran on, past 3 s.
    engine = QueryEngine(QueryLimits(0.001, 64 << 20, 1000, concurrency=1))
    try:
        for _ in range(5):
            started = time.monotonic()
            with pytest.raises(QueryTimeout):
                await asyncio.wait_for(engine.run([], RUNAWAY, 1), timeout=3)
            assert time.monotonic() - started < 1.5
    finally:
        await engine.close()


def test_text_columns_of_a_ragged_file_follow_duckdbs_naming(tmp_path: Path) -> None:
    # The names the fallback for files DuckDB's sniffer gives up on declares: the header's,
    # blank ones column<i>, repeats name_<n>, then column<i> up to the widest row; a
    # headerless file column0...; the preamble and comment lines are not records.
    text = "# exported\ntitle line\nid,name,name,\n# a note,with,many,fields,in,it\n1,a,b,c,d\n2\n"
    path = _write(tmp_path, text)
    dialect = Dialect(skip=2, comment="#", ragged=True)
    assert text_columns(str(path), dialect) == ("id", "name", "name_1", "column3", "column4")
    headless = Dialect(header=False, ragged=True)
    # The delimiter is the dialect's: with ',' this file is one column.
    assert text_columns(str(_write(tmp_path, "1;2\n3;4;5\n", "h.csv")), headless) == ("column0",)
    semi = Dialect(delimiter=";", header=False, ragged=True)
    assert text_columns(str(tmp_path / "h.csv"), semi) == ("column0", "column1", "column2")
