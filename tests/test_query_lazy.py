"""DuckDB costs a server that is never asked a query nothing: it is loaded, and its spare
databases opened, from the first query on (about 50 MiB per process otherwise, which the
large-upload memory target in `make bench` cannot spare). A real server process, its
mapped files read from /proc."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.serverproc import ServerProcess


def duckdb_loaded(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps")
    return any("duckdb" in line.split("/")[-1] for line in maps.read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_duckdb_is_loaded_by_the_first_query_not_at_start(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        assert server.proc is not None
        url = server.url
        requests.post(f"{url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        files = {"file": ("a.csv", b"x,y\n1,2\n", "text/csv")}
        up = requests.post(f"{url}/api/csv/upload", data={"session_id": "s1"}, files=files)
        assert up.status_code == 201, up.text
        assert not duckdb_loaded(server.proc.pid)
        answer = requests.post(
            f"{url}/api/csv/sessions/s1/query", json={"sql": "SELECT sum(y) AS s FROM a_csv"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == [[2]]
        assert duckdb_loaded(server.proc.pid)
    finally:
        assert server.stop() == 0
