"""The ``query`` scenario of bench/run.py (issue 20, item 9).

- A GROUP BY over a 1 GiB CSV (128 MiB with --quick): csvstore's query engine (its sandbox,
  the recorded dialect, --query-memory's 256 MiB) against DuckDB's own Python API reading the
  same file with read_csv, the same thread count, in alternating rounds; the median of each.
  Both the engine in this process and the server over HTTP (the file uploaded first) are
  measured when the server has the query endpoint.
- An empty query (``SELECT * FROM t LIMIT 0``) on a small file through HTTP: p50 and p95 of
  sequential requests.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import duckdb

from bench.run import (
    GIB,
    HOST,
    MIB,
    BenchError,
    Harness,
    Report,
    Row,
    Settings,
    percentile,
)
from csvstore.query.engine import Dialect, QueryEngine, QueryLimits, TableSource

SQL = (
    "SELECT category, count(*) AS n, sum(amount) AS total, avg(amount) AS mean "
    "FROM {table} GROUP BY category ORDER BY category"
)
EMPTY_REQUESTS = 200


def make_csv(path: Path, size: int) -> int:
    """About ``size`` bytes, never more (the 1 GiB file must pass the upload limit)."""
    query = """COPY (SELECT i AS id, 'cat_' || (i % 50) AS category,
                    round(((i * 7919) % 100000) / 100.0, 2) AS amount,
                    DATE '2020-01-01' + (i % 1000)::INTEGER AS day, md5(i::VARCHAR) AS note
             FROM range({rows}) t(i)) TO '{path}' (HEADER, DELIMITER ',')"""
    rows = 1_000_000
    with duckdb.connect(config={"enable_progress_bar": False}) as con:
        for _ in range(4):  # longer ids make later rows longer: measure, then correct
            con.execute(query.format(rows=rows, path=path))
            made = path.stat().st_size
            if 0.98 * size <= made <= size:
                break
            rows = int(rows * 0.99 * size / made)
    return made


def run_direct(path: Path, threads: int) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    with duckdb.connect(config={"threads": threads, "enable_progress_bar": False}) as con:
        rows = con.execute(SQL.format(table=f"read_csv('{path}')")).fetchall()
    return time.perf_counter() - started, [list(r) for r in rows]


async def run_engine(engine: QueryEngine, source: TableSource) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    result = await engine.run([source], SQL.format(table="big_csv"), 1000)
    return time.perf_counter() - started, result.rows


async def run_http(http: aiohttp.ClientSession, base: str) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    body = {"sql": SQL.format(table="big_csv"), "limit": 1000}
    async with http.post(f"{base}/api/csv/sessions/qbench/query", json=body) as resp:
        if resp.status != 200:
            raise BenchError(f"query: {resp.status} {await resp.text()}")
        rows = (await resp.json())["rows"]
    return time.perf_counter() - started, rows


def _same(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x[:2] != y[:2] or abs(float(x[2]) - float(y[2])) > 1e-6 * max(1.0, abs(float(x[2]))):
            return False
    return True


async def _upload(http: aiohttp.ClientSession, base: str, path: Path, name: str) -> None:
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("session_id", "qbench")
    with path.open("rb") as f:
        form.add_field("file", f, filename=name, content_type="text/csv")
        async with http.post(f"{base}/api/csv/upload", data=form) as resp:
            if resp.status != 201:
                raise BenchError(f"upload: {resp.status} {await resp.text()}")


async def scenario_query(h: Harness, s: Settings, rep: Report) -> None:
    sc = "query"
    work = h.tmp("query")
    path = work / "big.csv"
    size = await asyncio.to_thread(make_csv, path, GIB if not s.quick else 128 * MIB)
    threads = os.cpu_count() or 1
    rounds = 1 if s.quick else 3
    limits = QueryLimits(
        timeout_s=600, memory_bytes=256 * MIB, max_rows=1000, concurrency=1, threads=threads
    )
    engine = QueryEngine(limits)
    source = TableSource("bench", "big.csv", "2026-01-01", str(path), Dialect())
    server = await h.start("csvstore")
    base = f"http://{HOST}:{server.port}"
    timeout = aiohttp.ClientTimeout(total=900)
    direct: list[float] = []
    ours: list[float] = []
    over_http: list[float] = []
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(f"{base}/openapi.json") as resp:
                has_query = "/api/csv/sessions/{session_id}/query" in (await resp.json())["paths"]
            if has_query:
                async with http.post(f"{base}/api/csv/sessions", json={"session_id": "qbench"}):
                    pass
                await _upload(http, base, path, "big.csv")
            for _ in range(rounds):
                took, expected = await asyncio.to_thread(run_direct, path, threads)
                direct.append(took)
                took, rows = await run_engine(engine, source)
                ours.append(took)
                if not _same(rows, expected):
                    raise BenchError(f"the engine's result differs: {rows[:2]} {expected[:2]}")
                if has_query:
                    took, rows = await run_http(http, base)
                    over_http.append(took)
                    if not _same(rows, expected):
                        raise BenchError("the server's result differs")
            latencies = await _empty_queries(http, base, work) if has_query else []
    finally:
        await engine.close()
        await h.stop(server)
    what = f"GROUP BY over a {size / GIB:.2f} GiB CSV, s ({threads} threads, median of {rounds})"
    d = statistics.median(direct)
    rep.add(Row(sc, f"{what}: engine", d, statistics.median(ours), "<= 1.5x DuckDB",
                statistics.median(ours) <= 1.5 * d))  # fmt: skip
    if over_http:
        rep.add(Row(sc, f"{what}: HTTP", d, statistics.median(over_http), "<= 1.5x DuckDB",
                    statistics.median(over_http) <= 1.5 * d))  # fmt: skip
        p50 = percentile(latencies, 50)
        rep.add(Row(sc, f"empty query on a small file, HTTP p50 ms ({len(latencies)} requests)",
                    None, round(p50, 2), "<= 20 ms", p50 <= 20))  # fmt: skip
        rep.add(Row(sc, "empty query, HTTP p95 ms", None, round(percentile(latencies, 95), 2)))
    else:
        rep.note("query: the server has no query endpoint (q-api not merged): HTTP not measured")
    rep.record("query-rounds", direct=direct, engine=ours, http=over_http, size=size)


async def _empty_queries(http: aiohttp.ClientSession, base: str, work: Path) -> list[float]:
    small = work / "small.csv"
    small.write_text("a,b\n1,x\n2,y\n")
    await _upload(http, base, small, "small.csv")
    body = {"sql": "SELECT * FROM small_csv LIMIT 0", "limit": 100}
    latencies = []
    for i in range(EMPTY_REQUESTS + 10):
        started = time.perf_counter()
        async with http.post(f"{base}/api/csv/sessions/qbench/query", json=body) as resp:
            await resp.read()
            if resp.status != 200:
                raise BenchError(f"empty query: {resp.status}")
        if i >= 10:  # the first few warm the server's caches
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies
