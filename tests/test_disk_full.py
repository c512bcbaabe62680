"""A real full filesystem: the server's data folder on a small tmpfs mount (needs root, as
CI runs; elsewhere skipped with the reason). tests/test_failures.py injects ENOSPC into the
write calls; here the kernel raises it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.local_storage

SIZE_MIB = 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _rows(size: int) -> bytes:
    line = b"1,some text to fill the disk,2.5\n"
    return b"id,text,amount\n" + line * (size // len(line))


def test_a_full_disk_refuses_with_507_and_leaves_nothing(small_disk: Path) -> None:
    data = small_disk / "data"
    server = ServerProcess(data, "--min-free-space", "0")
    server.start()
    try:
        url = server.url
        resp = requests.post(f"{url}/api/csv/sessions", json={"session_id": "s"}, timeout=10)
        assert resp.status_code == 201
        big = _rows(SIZE_MIB * 2 * 1024 * 1024)
        resp = requests.post(
            f"{url}/api/csv/upload",
            data={"session_id": "s"},
            files={"file": ("big.csv", big, "text/csv")},
            timeout=60,
        )
        assert resp.status_code == 507, resp.text
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert "disk is full" in resp.json()["detail"]
        assert list((data / "uploads").glob("*.csv")) == []
        assert [p for p in (data / "tmp").rglob("*") if p.is_file()] == []
        # The space is back: the next uploads are stored, small (journaled) and larger.
        for size in (2_000, 1_000_000):
            body = _rows(size)
            resp = requests.post(
                f"{url}/api/csv/upload",
                data={"session_id": "s"},
                files={"file": (f"{size}.csv", body, "text/csv")},
                timeout=60,
            )
            assert resp.status_code == 201, resp.text
            file_id = resp.json()["file"]["id"]
            got = requests.get(f"{url}/api/csv/files/{file_id}/content", timeout=30)
            assert got.content == body
    finally:
        assert server.stop() == 0
    check = subprocess.run(
        [sys.executable, "-m", "csvstore", "check", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "removed 0 temp file(s) and 0 stored file(s)" in check.stdout
