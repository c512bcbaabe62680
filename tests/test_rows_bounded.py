"""/rows against the real server process: bounded in bytes whatever the file's lines and cells.

The big single-line files are generated while they are uploaded, so the test never holds
them; the server's peak memory (VmHWM) is read from /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from csvstore.commandline import settings_from
from csvstore.config import Settings
from csvstore.config_values import KiB, MiB
from tests.serverproc import ServerProcess

CELL_LIMIT = Settings().rows_cell_limit
ROWS_MAX_BYTES = Settings().rows_max_bytes

# The 1 GiB case runs in `make stress`; make test runs the same test on 64 MiB.
LINE_SIZE = int(os.environ.get("CSVSTORE_ROWS_LINE_SIZE", str(64 * MiB)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("rows") / "data", "--max-upload-size", "2GiB")
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def _memory(server: ServerProcess, field: str) -> int:
    """VmRSS or VmHWM of the server process, in bytes."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/<pid>/status")


def _reset_peak(server: ServerProcess) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    assert server.proc is not None
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")


def _upload_stream(
    server: ServerProcess, session: str, name: str, parts: Iterator[bytes]
) -> dict[str, Any]:
    """POST /upload with a multipart body generated as it is sent (chunked)."""
    requests.post(f"{server.url}/api/csv/sessions", json={"session_id": session}, timeout=10)
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        yield (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="session_id"\r\n\r\n'
            f"{session}\r\n"
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        yield from parts
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = requests.post(
        f"{server.url}/api/csv/upload",
        data=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=600,
    )
    assert resp.status_code == 201, resp.text
    file: dict[str, Any] = resp.json()["file"]
    return file


def _single_line(size: int) -> Iterator[bytes]:
    """One line of `size` bytes: a short cell, then one cell of the rest (no line break)."""
    yield b"1,"
    block = b"0123456789abcdef" * 65536  # 1 MiB
    left = size - 2
    while left > 0:
        yield block[:left]
        left -= len(block)


def test_rows_of_a_single_huge_line_read_a_bounded_amount(server: ServerProcess) -> None:
    file = _upload_stream(server, "line", "line.csv", _single_line(LINE_SIZE))
    assert file["file_size"] == LINE_SIZE
    assert file["row_count"] == 1, file
    url = f"{server.url}/api/csv/files/{file['id']}/rows"

    rss_before = _memory(server, "VmRSS")
    _reset_peak(server)
    started = time.monotonic()
    resp = requests.get(f"{url}?limit=1", timeout=120)
    elapsed = time.monotonic() - started
    peak = _memory(server, "VmHWM")

    assert resp.status_code == 200, resp.text[:500]
    page = resp.json()
    assert page["rows"] == [["1", ("0123456789abcdef" * (CELL_LIMIT // 16 + 1))[:CELL_LIMIT]]]
    assert page["truncated"] == [[0, 1]]
    assert page["next_offset"] is None  # the profile says the file has this one row
    assert len(resp.content) < CELL_LIMIT + 1024
    # Bounded by ROWS_MAX_BYTES (8 MiB), not by the line: the read and what it decodes.
    assert peak - rss_before < 12 * ROWS_MAX_BYTES, (peak - rss_before) / MiB
    assert elapsed < 10
    # Past the last row: nothing read at all.
    assert requests.get(f"{url}?offset=1", timeout=10).json() == {
        "columns": [],
        "rows": [],
        "next_offset": None,
        "truncated": [],
    }


def test_rows_after_a_huge_row_are_reached_by_counting(server: ServerProcess) -> None:
    """Row 1 starts after a row longer than the bound: the counter finds it, holding none."""
    half = LINE_SIZE // 2

    def two_rows() -> Iterator[bytes]:
        for number, fill in ((b"1", b"a"), (b"2", b"b")):
            yield number + b","
            left = half - 3
            while left > 0:
                yield fill * min(left, MiB)
                left -= MiB
            yield b"\n"

    file = _upload_stream(server, "two", "two.csv", two_rows())
    assert file["row_count"] == 2, file
    url = f"{server.url}/api/csv/files/{file['id']}/rows"
    rss_before = _memory(server, "VmRSS")
    _reset_peak(server)
    first = requests.get(f"{url}?limit=1000", timeout=120).json()
    second = requests.get(f"{url}?offset=1", timeout=120).json()
    peak = _memory(server, "VmHWM")
    assert first["rows"] == [["1", "a" * CELL_LIMIT]]
    assert (first["truncated"], first["next_offset"]) == ([[0, 1]], 1)
    assert second["rows"] == [["2", "b" * CELL_LIMIT]]
    assert (second["truncated"], second["next_offset"]) == ([[0, 1]], None)
    assert peak - rss_before < 12 * ROWS_MAX_BYTES, (peak - rss_before) / MiB


def test_a_cell_over_the_limit_comes_back_cut_and_listed(server: ServerProcess) -> None:
    cell = "".join(f"{i:07d}," for i in range(37_500))  # 300,000 characters, commas and all
    assert len(cell) == 300_000
    data = f'id,shape,n\n1,"{cell}",2\n3,short,4\n'.encode()
    file = _upload_stream(server, "cell", "wkt.csv", iter([data]))
    resp = requests.get(f"{server.url}/api/csv/files/{file['id']}/rows", timeout=30)
    assert resp.status_code == 200, resp.text[:500]
    page = resp.json()
    assert page["columns"] == ["id", "shape", "n"]
    assert page["rows"] == [["1", cell[:CELL_LIMIT], "2"], ["3", "short", "4"]]
    assert page["truncated"] == [[0, 1]]
    assert page["next_offset"] is None
    # The whole cell is in the file's content, by Range.
    start = data.index(b'"') + 1
    ranged = requests.get(
        f"{server.url}/api/csv/files/{file['id']}/content",
        headers={"Range": f"bytes={start}-{start + len(cell) - 1}"},
        timeout=30,
    )
    assert ranged.status_code == 206
    assert ranged.content.decode() == cell


def test_rows_bound_settings() -> None:
    assert (8 * MiB, 65_536) == (ROWS_MAX_BYTES, CELL_LIMIT)
    given = settings_from(["--rows-max-bytes", "1MiB"], {"CSVSTORE_ROWS_CELL_LIMIT": "500"})
    assert (given.rows_max_bytes, given.rows_cell_limit) == (MiB, 500)
    assert settings_from([], {"CSVSTORE_ROWS_MAX_BYTES": "64KiB"}).rows_max_bytes == 64 * KiB
    for flag, value, message in [
        ("--rows-max-bytes", "32MiB", "the /rows byte bound is between 64KiB and 16MiB"),
        ("--rows-max-bytes", "1k", "the /rows byte bound is between 64KiB and 16MiB"),
        ("--rows-cell-limit", "0", "the /rows cell limit is at least 1 character"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "csvstore", flag, value],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2
        assert message in done.stderr
