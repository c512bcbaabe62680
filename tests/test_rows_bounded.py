"""/rows against the real server process: bounded in bytes whatever the file's lines and cells.

The big single-line files are generated while they are uploaded, so the test never holds
them; the server's peak memory (VmHWM) is read from /proc.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from csvstore.config import MiB
from csvstore.rows import CELL_LIMIT, ROWS_MAX_BYTES
from tests.serverproc import ServerProcess

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
