"""``python -m csvstore migrate-to``: an existing SQLite + folder deployment copied to the
database and storage of the ``settings`` fixture -- PostgreSQL and S3 under ``make
test-s3``, another SQLite file and folder under ``make test`` -- and served unchanged."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from csvstore.config import Settings
from csvstore.config_values import MiB
from tests import s3util
from tests.conftest import (
    Client,
    MakeClient,
    assert_consistent,
    listed_file_paths,
    raw_multipart,
    run_async,
    stored_bytes,
    stored_state,
    upload_form,
)
from tests.pgproxy import CommitCuttingProxy

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


def _remove_stored(settings: Settings, name: str) -> None:
    if settings.uses_s3:
        s3util.delete_object(settings, name)
    else:
        (settings.uploads_dir / name).unlink()


def _replace_stored(settings: Settings, name: str, data: bytes) -> None:
    if settings.uses_s3:
        s3util.put_object(settings, name, data)
    else:
        (settings.uploads_dir / name).write_bytes(data)


async def _old_deployment(make_client: MakeClient, old: Settings, count: int) -> list[str]:
    """A source with one session "s" of ``count`` files; their ids."""
    source = await make_client(old)
    await source.post("/api/csv/sessions", json={"session_id": "s"})
    ids = []
    for i in range(count):
        resp = await source.post(
            "/api/csv/upload", data=upload_form(b"a,b\n%d,x\n" % i, session_id="s")
        )
        assert resp.status == 201
        ids.append((await resp.json())["file"]["id"])
    await source.close()
    return ids


async def test_a_rerun_copies_the_bytes_of_rows_the_target_lists_without_them(
    make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    """A re-run counted every row already in the target as done, bytes or not."""
    old = Settings(data_dir=tmp_path / "old")
    ids = await _old_deployment(make_client, old, 3)
    done = _migrate(settings, old.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    _remove_stored(settings, f"{ids[0]}.csv")  # lost
    _replace_stored(settings, f"{ids[1]}.csv", b"a,b\n9,y\n")  # same size, other bytes

    again = _migrate(settings, old.data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 already there; 2 file(s) listed in the target without their bytes, copied " in (
        again.stdout
    )
    target = await make_client(settings)
    for i, file_id in enumerate(ids):
        resp = await target.get(f"/api/csv/files/{file_id}/content")
        assert resp.status == 200
        assert await resp.read() == b"a,b\n%d,x\n" % i
    assert_consistent(settings)


@pytest.mark.local_storage
def test_the_source_storage_as_the_target_is_refused(settings: Settings, tmp_path: Path) -> None:
    """Only the database moving: a failed insert used to delete the source's bytes."""
    old = Settings(data_dir=tmp_path / "old")
    old.uploads_dir.mkdir(parents=True)
    sqlite3.connect(old.database_path).close()
    for storage in (old.uploads_dir, old.uploads_dir / "sub"):
        same = _migrate(settings, old.data_dir, "--storage", str(storage))
        assert same.returncode == 2, same.stdout + same.stderr
        assert "the source and target storage are the same" in same.stderr


def test_the_source_bucket_prefix_as_the_target_is_refused(
    s3_settings: Settings, tmp_path: Path
) -> None:
    old = Settings(data_dir=tmp_path / "old")
    old.data_dir.mkdir(parents=True)
    sqlite3.connect(old.database_path).close()
    same = _migrate(
        s3_settings, old.data_dir, "--from-storage", s3_settings.storage,
        "--storage", s3_settings.storage,
    )  # fmt: skip
    assert same.returncode == 2, same.stdout + same.stderr
    assert "the source and target storage are the same" in same.stderr


@pytest.mark.parametrize("after", [True, False], ids=["committed", "rolled-back"])
async def test_a_connection_lost_around_commit_never_leaves_a_row_without_bytes(
    make_client: MakeClient, settings: Settings, tmp_path: Path, pg_server_url: str, after: bool
) -> None:
    """The first file's COMMIT: the connection is cut once the server has committed (the
    client sees an error), or before the server gets it (a rollback). Its bytes used to be
    deleted either way: a row without bytes, counted "already there" by every later run."""
    old = Settings(data_dir=tmp_path / "old")
    ids = await _old_deployment(make_client, old, 3)
    with CommitCuttingProxy(pg_server_url, after=after) as proxy:
        done = _migrate(settings, old.data_dir, "--database-url", proxy.url(settings.database_url))
        assert proxy.cut
    if after:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "copied 1 session(s) and 3 file(s)" in done.stdout
    else:  # told, not hidden: the file is named, its bytes gone with its intent
        assert done.returncode == 1, done.stdout + done.stderr
        assert "copied 1 session(s) and 2 file(s)" in done.stdout
        assert f"not copied: file {min(ids)} (its insert failed" in done.stdout  # by id
        assert_consistent(settings)
        again = _migrate(settings, old.data_dir)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "and 1 file(s)" in again.stdout
    assert_consistent(settings)
    target = await make_client(settings)
    for i, file_id in enumerate(ids):
        resp = await target.get(f"/api/csv/files/{file_id}/content")
        assert resp.status == 200
        assert await resp.read() == b"a,b\n%d,x\n" % i
    intents = run_async(_intents(settings.database_url))
    assert intents == 0


async def _intents(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM upload_intents"))
    finally:
        await conn.close()


@pytest.mark.parametrize("on", ["folder", "s3"])
async def test_resumable_uploads_in_progress_are_not_dropped_silently(
    make_client: MakeClient, settings: Settings, tmp_path: Path, on: str
) -> None:
    """They were left behind, their acknowledged bytes with them, without a word."""
    old = Settings(data_dir=tmp_path / "old")
    source_flags: tuple[str, ...] = ()
    if on == "s3":
        if not settings.uses_s3:
            pytest.skip(f"S3 only: set {s3util.TEST_S3_URL_ENV} (make test-s3)")
        old = replace(
            settings, data_dir=old.data_dir, database_url="", storage=s3util.fresh_prefix_url()
        )
        source_flags = ("--from-storage", old.storage)
    await _old_deployment(make_client, old, 1)
    source = await make_client(old)
    meta = ",".join(
        f"{k} {base64.b64encode(v).decode()}"
        for k, v in [("session_id", b"s"), ("filename", b"p.csv")]
    )
    created = await source.post(
        "/api/csv/tus/",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": "100", "Upload-Metadata": meta},
    )
    assert created.status == 201
    location = created.headers["Location"]
    patched = await source.patch(
        location,
        data=b"a,b\n1,2\n",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert patched.status == 204  # 8 bytes acknowledged
    await source.close()
    upload_id = location.rstrip("/").rsplit("/", 1)[1]

    refused = _migrate(settings, old.data_dir, *source_flags)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "1 resumable (tus) upload(s) in progress" in refused.stdout
    assert upload_id in refused.stdout
    assert listed_file_paths(settings) == set()  # refused before anything was copied

    dropped = _migrate(settings, old.data_dir, *source_flags, "--drop-uploads-in-progress")
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    assert f"not copied: resumable upload {upload_id} in progress" in dropped.stdout
    assert "copied 1 session(s) and 1 file(s)" in dropped.stdout
    source = await make_client(old)  # the upload ended, for the fixture's check of the source
    ended = await source.delete(location, headers={"Tus-Resumable": "1.0.0"})
    assert ended.status == 204
    await source.close()


async def test_a_rerun_against_a_live_target_spares_its_uploads_in_flight(
    make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    """migrate-to removed every temp file (aborted every multipart upload) of the target."""
    old = Settings(data_dir=tmp_path / "old")
    await _old_deployment(make_client, old, 1)
    first = _migrate(settings, old.data_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    target = await make_client(settings)
    await target.post("/api/csv/sessions", json={"session_id": "live"})
    data = b"id,text,value,day\n" + LINE * (12 * MiB // len(LINE))  # a part in S3 by half
    body, headers = raw_multipart(
        ('form-data; name="session_id"', b"live"),
        ('form-data; name="file"; filename="big.csv"', data),
    )
    half = len(body) // 2
    go_on = asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield body[:half]
        await go_on.wait()
        yield body[half:]

    sending = asyncio.create_task(target.post("/api/csv/upload", data=slowly(), headers=headers))
    try:
        for _ in range(400):  # until the upload has begun storing its bytes
            _, _, temps = stored_state(settings)
            if temps:
                break
            await asyncio.sleep(0.05)
        assert temps, "the upload never began storing"
        again = await asyncio.to_thread(_migrate, settings, old.data_dir)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        go_on.set()
        resp = await sending
    assert resp.status == 201, await resp.text()
    file_id = (await resp.json())["file"]["id"]
    content = await target.get(f"/api/csv/files/{file_id}/content")
    assert await content.read() == data


def _check(target: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "csvstore", "check", "--data-dir", str(target.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )


def _start_migrate(
    target: Settings, source_dir: Path, env: dict[str, str]
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "csvstore", "migrate-to", "--from-data-dir", str(source_dir),
            "--data-dir", str(target.data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )  # fmt: skip


async def test_a_check_during_a_migration_spares_its_copies(
    make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    """Walks crashpoints' migrate.bytes_copied: a copy is in the target, its row not yet. The
    copy had no intent, so a check of the (live) target took it for an orphan and removed it;
    the row then committed without bytes."""
    old = Settings(data_dir=tmp_path / "old")
    ids = await _old_deployment(make_client, old, 2)
    name = f"{max(ids)}.csv"  # the second copied (by id): the database lists the first by then
    migrating = _start_migrate(
        settings, old.data_dir, {"CSVSTORE_PAUSE_AT": "migrate.bytes_copied:6"}
    )
    try:
        for _ in range(400):
            if stored_bytes(settings, name) is not None:
                break
            await asyncio.sleep(0.05)
        assert stored_bytes(settings, name) is not None, "the copy was never published"
        report = await asyncio.to_thread(_check, settings)
        assert report.returncode == 0, report.stdout + report.stderr
        assert stored_bytes(settings, name) is not None, "the check removed a copy in flight"
        out, err = migrating.communicate(timeout=60)
    finally:
        migrating.kill()
    assert migrating.returncode == 0, out + err
    assert "copied 1 session(s) and 2 file(s)" in out
    assert stored_bytes(settings, name) == b"a,b\n%d,x\n" % ids.index(max(ids))
    assert_consistent(settings)


async def test_a_migration_killed_between_copy_and_row_is_resumed(
    make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    """SIGKILLed at migrate.bytes_copied: the check removes the copy of the dead process (its
    intent says it is a leftover), and the next run copies it again."""
    old = Settings(data_dir=tmp_path / "old")
    ids = await _old_deployment(make_client, old, 2)
    killed = _start_migrate(settings, old.data_dir, {"CSVSTORE_CRASH_AT": "migrate.bytes_copied@2"})
    out, err = killed.communicate(timeout=120)
    assert killed.returncode == -9, out + err
    report = await asyncio.to_thread(_check, settings)
    assert report.returncode == 0, report.stdout + report.stderr
    assert_consistent(settings)  # one file copied, the other's bytes and intent cleared
    assert len(listed_file_paths(settings)) == 1
    again = _migrate(settings, old.data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "copied 0 session(s) and 1 file(s)" in again.stdout
    assert "2 already there" in again.stdout  # the session and the first file
    assert listed_file_paths(settings) == {f"{file_id}.csv" for file_id in ids}
    assert_consistent(settings)
