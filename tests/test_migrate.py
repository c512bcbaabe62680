"""``python -m csvstore migrate-to``: an existing SQLite + folder deployment copied to the
database and storage of the ``settings`` fixture -- PostgreSQL and S3 under ``make
test-s3``, another SQLite file and folder under ``make test`` -- and served unchanged."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from csvstore.config import MiB, Settings
from tests.conftest import Client, MakeClient, assert_consistent, upload_form

LINE = b"12345,some text,3.14159,2024-01-01\n"


def _migrate(target: Settings, source_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "csvstore", "migrate-to", "--from-data-dir", str(source_dir),
            "--data-dir", str(target.data_dir), *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )  # fmt: skip


async def _everything(client: Client) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    sessions = await (await client.get("/api/csv/sessions?limit=1000")).json()
    contents = {}
    for session in sessions:
        for file in session["csv_files"]:
            resp = await client.get(f"/api/csv/files/{file['id']}/content")
            assert resp.status == 200
            contents[file["id"]] = await resp.read()
    return sessions, contents


async def test_a_sqlite_and_folder_deployment_moves_over_whole(
    make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    old = Settings(data_dir=tmp_path / "old", max_upload_size=settings.max_upload_size)
    source = await make_client(old)
    await source.post("/api/csv/sessions", json={"session_id": "empty"})
    await source.post("/api/csv/sessions", json={"session_id": "brief", "ttl_seconds": 86400})
    await source.post("/api/csv/sessions", json={"session_id": "full"})
    big = b"id,text,value,day\n" + LINE * (6 * MiB // len(LINE))  # several parts on S3
    uploads = [("full", b"a,b\n1,2\n"), ("full", big), ("brief", "é,ü\n1,2\n".encode("cp1252"))]
    uploads += [("full", b"x\n%d\n" % i) for i in range(5)]
    for session_id, data in uploads:
        form = upload_form(data, session_id=session_id)
        assert (await source.post("/api/csv/upload", data=form)).status == 201
    files = (await (await source.get("/api/csv/sessions/full")).json())["csv_files"]
    assert (await source.delete(f"/api/csv/files/{files[-1]['id']}")).status == 200
    before = await _everything(source)
    await source.close()

    done = _migrate(settings, old.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "copied 3 session(s) and 7 file(s)" in done.stdout
    if not settings.uses_postgres:  # small copies on a local disk were journaled, then synced
        with sqlite3.connect(settings.database_path) as conn:
            assert conn.execute("SELECT count(*) FROM file_journal").fetchone() == (0,)
    target = await make_client(settings)
    after = await _everything(target)
    assert after == before  # ids, names, timestamps, updated_at, expires_at, profiles, bytes
    assert_consistent(settings)
    assert_consistent(old)  # the source is left as it was

    again = _migrate(settings, old.data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "copied 0 session(s) and 0 file(s) (0 bytes); 10 already there" in again.stdout


async def test_files_whose_bytes_are_gone_are_reported_not_copied(
    make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    old = Settings(data_dir=tmp_path / "old")
    source = await make_client(old)
    await source.post("/api/csv/sessions", json={"session_id": "s"})
    ids = []
    for i in range(3):
        resp = await source.post(
            "/api/csv/upload", data=upload_form(b"a\n%d\n" % i, session_id="s")
        )
        ids.append((await resp.json())["file"]["id"])
    await source.close()
    (old.uploads_dir / f"{ids[0]}.csv").unlink()  # lost
    (old.uploads_dir / f"{ids[1]}.csv").write_bytes(b"a\n9\n")  # changed since its row

    done = _migrate(settings, old.data_dir)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "copied 1 session(s) and 1 file(s)" in done.stdout
    assert f"not copied: file {ids[0]}" in done.stdout
    assert f"not copied: file {ids[1]}" in done.stdout
    target = await make_client(settings)
    files = (await (await target.get("/api/csv/sessions/s")).json())["csv_files"]
    assert [f["id"] for f in files] == [ids[2]]
    (old.uploads_dir / f"{ids[0]}.csv").write_bytes(b"a\n0\n")  # for the fixture's own check
    (old.uploads_dir / f"{ids[1]}.csv").write_bytes(b"a\n1\n")


def test_the_same_database_twice_is_refused(settings: Settings, tmp_path: Path) -> None:
    same = _migrate(replace(settings, data_dir=tmp_path / "x"), tmp_path / "x")
    assert same.returncode == 2
    assert "same" in same.stderr or "no source database" in same.stderr
