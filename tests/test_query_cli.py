"""``csvstore query`` and ``csvstore files summary`` run as subprocesses against the real
server process (issue 20, item 10)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest

from tests.serverproc import ServerProcess
from tests.test_client import create_session, json_of, run_cli, started, stderr_of, upload_one

SALES = b"region,amount\nnorth,10\nsouth,5.5\nnorth,2\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from started(tmp_path_factory.mktemp("query-cli") / "data", "--query-max-rows", "40")


def test_query_prints_a_table_json_or_the_whole_csv(server: ServerProcess) -> None:
    create_session(server, "q1")
    upload_one(server, "q1", "sales.csv", SALES)
    sql = "SELECT region, sum(amount) AS total FROM sales_csv GROUP BY region ORDER BY region"
    shown = run_cli(server.url, "query", "q1", sql)
    assert shown.returncode == 0, stderr_of(shown)
    text = shown.stdout.decode()
    assert "region" in text
    assert "total" in text
    assert "north" in text
    assert "12" in text
    assert "5.5" in text
    assert "2 row(s)" in text
    doc = json_of(run_cli(server.url, "query", "q1", sql, "--json"))
    assert doc["rows"] == [["north", 12], ["south", 5.5]]
    assert doc["truncated"] is False
    limited = json_of(
        run_cli(server.url, "query", "q1", "SELECT * FROM sales_csv", "--limit", "1", "--json")
    )
    assert (limited["row_count"], limited["truncated"]) == (1, True)
    raw = run_cli(server.url, "query", "q1", "SELECT * FROM range(100) t(n)", "--csv")
    assert raw.returncode == 0, stderr_of(raw)
    rows = list(csv.reader(io.StringIO(raw.stdout.decode())))
    assert rows[:3] == [["n"], ["0"], ["1"]]
    assert len(rows) == 1 + 40  # the server's --query-max-rows


def test_a_refused_query_is_exit_1_with_the_servers_detail(server: ServerProcess) -> None:
    create_session(server, "q2")
    upload_one(server, "q2", "sales.csv", SALES)
    refused = run_cli(server.url, "query", "q2", "COPY sales_csv TO '/tmp/x.csv'")
    assert refused.returncode == 1
    assert "COPY" in stderr_of(refused)
    as_csv = run_cli(server.url, "query", "q2", "SELECT * FROM read_text('/etc/passwd')", "--csv")
    assert as_csv.returncode == 1
    assert as_csv.stdout == b""  # nothing of a refused result on stdout
    unknown = run_cli(server.url, "query", "nope", "SELECT 1")
    assert unknown.returncode == 1
    assert "nope" in stderr_of(unknown)
    both = run_cli(server.url, "query", "q2", "SELECT 1", "--csv", "--json")
    assert both.returncode == 2


def test_files_summary_shows_each_column(server: ServerProcess) -> None:
    create_session(server, "q3")
    file = upload_one(server, "q3", "sales.csv", SALES)
    doc = json_of(run_cli(server.url, "files", "summary", file["id"], "--json"))
    assert [c["name"] for c in doc["columns"]] == ["region", "amount"]
    amount = doc["columns"][1]
    assert (amount["count"], amount["min"], amount["max"]) == (3, 2, 10)
    shown = run_cli(server.url, "files", "summary", file["id"])
    assert shown.returncode == 0, stderr_of(shown)
    text = shown.stdout.decode()
    assert "region" in text
    assert "north (2)" in text
    missing = run_cli(server.url, "files", "summary", "no-such-file")
    assert missing.returncode == 1
    assert "no-such-file" in stderr_of(missing)
