"""``python -m csvstore check [--repair]`` on a data folder with every kind of damage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from csvstore.config import Settings
from tests.conftest import MakeClient, csv_bytes, stored_state, upload_form

# It damages the uploads folder by hand; tests/test_s3.py does the same to a bucket.
pytestmark = pytest.mark.local_storage


def run_check(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "csvstore", "check", "--data-dir", str(settings.data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_check_reports_repairs_and_is_idempotent(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    ids = []
    for i in range(4):
        resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes(i + 1)))
        ids.append((await resp.json())["file"]["id"])
    await client.close()

    uploads = settings.uploads_dir
    (uploads / f"{ids[0]}.csv").unlink()  # row without bytes
    (uploads / f"{ids[1]}.csv").write_bytes(b"changed,bytes\n")  # size and digest differ
    stored = (uploads / f"{ids[2]}.csv").read_bytes()
    (uploads / f"{ids[2]}.csv").write_bytes(stored[:-2] + b"X\n")  # same size, other digest
    old = time.time() - 7200
    orphan = uploads / f"{uuid.uuid4()}.csv"  # csvstore's name, no row
    orphan.write_bytes(b"a\n")
    os.utime(orphan, (old, old))
    young_orphan = uploads / f"{uuid.uuid4()}.csv"  # may be an upload in flight on a running server
    young_orphan.write_bytes(b"a\n")
    stale_temp = settings.temp_dir / "dead.csv.part"
    stale_temp.write_bytes(b"half")
    os.utime(stale_temp, (old, old))

    report = run_check(settings)
    assert report.returncode == 1, report.stdout + report.stderr
    assert f"missing bytes: file {ids[0]}" in report.stdout
    assert f"size or sha256 differs: file {ids[1]}" in report.stdout
    assert f"size or sha256 differs: file {ids[2]}" in report.stdout
    assert "integrity: ok" in report.stdout
    assert not orphan.exists()
    assert young_orphan.exists()
    assert not stale_temp.exists()

    repaired = run_check(settings, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "3 row(s) removed" in repaired.stdout
    young_orphan.unlink()
    on_disk, listed, temps = stored_state(settings)
    assert on_disk == listed == {f"{ids[3]}.csv"}
    assert temps == []

    again = run_check(settings, "--repair")
    assert again.returncode == 0
    assert "0 row(s) removed" in again.stdout
    assert "removed 0 temp file(s) and 0 stored file(s)" in again.stdout
