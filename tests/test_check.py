"""``python -m csvstore check [--repair]`` on a data folder with every kind of damage."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from csvstore.config import Settings
from csvstore.intents import owner_alive, this_owner
from csvstore.timeutil import format_utc, utc_now
from csvstore.wiring import open_store
from tests.conftest import MakeClient, csv_bytes, dead_owner, stored_state, upload_form

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
    # Published by a live process that has not committed its row yet: however old the file
    # looks, its intent spares it. A dead process's intent does not.
    in_flight = uploads / f"{uuid.uuid4()}.csv"
    in_flight.write_bytes(b"a\n")
    os.utime(in_flight, (old, old))
    abandoned = uploads / f"{uuid.uuid4()}.csv"
    abandoned.write_bytes(b"a\n")
    async with open_store(settings) as store:  # SQLite or, under test-postgres, PostgreSQL
        for key, owner in ((in_flight.name, this_owner()), (abandoned.name, dead_owner())):
            await store.db.write(
                functools.partial(store.repo.add_intent, storage_key=key, owner=owner)
            )
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
    assert in_flight.exists()
    assert not abandoned.exists()
    assert "cleared 1 intent(s)" in report.stdout
    assert "checked " not in report.stderr  # the summary once, on stdout (was on both)
    assert not stale_temp.exists()

    repaired = run_check(settings, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "3 row(s) removed" in repaired.stdout
    in_flight.unlink()
    on_disk, listed, temps = stored_state(settings)
    assert on_disk == listed == {f"{ids[3]}.csv"}
    assert temps == []

    again = run_check(settings, "--repair")
    assert again.returncode == 0
    assert "0 row(s) removed" in again.stdout
    assert "removed 0 temp file(s) and 0 stored file(s)" in again.stdout


def test_an_intent_is_live_while_its_process_runs() -> None:
    now = datetime.now(UTC)
    assert owner_alive(this_owner(), utc_now())
    assert not owner_alive(dead_owner(), utc_now())  # same host, process gone
    # Another host's process cannot be asked: its intent is live until it is an hour old.
    other = "another-boot/4026531836/elsewhere 1234 5678"
    assert owner_alive(other, format_utc(now - timedelta(minutes=59)), now=now)
    assert not owner_alive(other, format_utc(now - timedelta(minutes=61)), now=now)
    assert not owner_alive(other, "not a time", now=now)
    # Same kernel, another pid namespace (another container): its pids are not ours to ask.
    machine, _pid, started = this_owner().split(" ")
    boot, _, host = machine.split("/", 2)
    other_container = f"{boot}/1/{host} {os.getpid() + 1_000_000} {started}"
    assert owner_alive(other_container, format_utc(now - timedelta(minutes=1)), now=now)
