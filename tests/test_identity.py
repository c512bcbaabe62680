"""The store id: the real server and the real ``python -m csvstore check`` refuse a database
and a storage that are not one store's, never remove a file that is not csvstore's, and
adopt a deployment from before the store id. The S3 variants are in tests/test_s3.py."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from csvstore.storage.local import STORE_MARKER
from tests.serverproc import ServerProcess, free_port

pytestmark = pytest.mark.local_storage

FOREIGN = {"notes.txt": b"my notes\n", "mine.csv": b"a,b\n1,2\n"}
PROJECT = {"README.md": b"# my project\n", "Makefile": b"all:\n", "pyproject.toml": b"[x]\n"}


def _csvstore(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m csvstore ARGS``; a server that starts instead of refusing times out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSVSTORE_")}
    return subprocess.run(
        [sys.executable, "-m", "csvstore", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=env,
    )


def _plant(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under the folder, by relative path: what must be left untouched."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _make_old(folder: Path) -> None:
    """Past the checks' age limits: a check of a live store spares younger stored files."""
    old = time.time() - 7200
    for path in folder.rglob("*"):
        os.utime(path, (old, old))


def _upload(server: ServerProcess, count: int = 2, session: str = "s1") -> list[str]:
    """Stored names of ``count`` new uploads into a new session."""
    created = requests.post(
        f"{server.url}/api/csv/sessions", json={"session_id": session}, timeout=10
    )
    assert created.status_code == 201, created.text
    names = []
    for i in range(count):
        resp = requests.post(
            f"{server.url}/api/csv/upload",
            files={"file": ("data.csv", b"a,b\n%d,2\n" % i, "text/csv")},
            data={"session_id": session},
            timeout=10,
        )
        assert resp.status_code == 201, resp.text
        names.append(resp.json()["file"]["filename"])
    return names


def _deployment(data_dir: Path, *args: str, count: int = 2) -> list[str]:
    """A deployment with ``count`` stored files, served once by the real server."""
    server = ServerProcess(data_dir, *args)
    server.start()
    try:
        return _upload(server, count)
    finally:
        assert server.stop() == 0


def _store_id(database: Path) -> str | None:
    with sqlite3.connect(database) as conn:
        row = conn.execute("SELECT store_id FROM store_identity").fetchone()
    return None if row is None else str(row[0])


def test_foreign_files_in_the_storage_folder_survive_start_up_and_check(tmp_path: Path) -> None:
    data = tmp_path / "data"
    uploads = data / "uploads"
    _plant(uploads, FOREIGN)
    _plant(uploads / "sub", {"x.csv": b"x\n"})
    _plant(data / "tmp", {"notes.txt": b"a user's temp notes\n"})
    _make_old(data)
    names = _deployment(data)
    restarted = ServerProcess(data)
    restarted.start()  # a second start-up check, with stored files this time
    assert restarted.stop() == 0
    _make_old(data)

    checked = _csvstore("check", "--data-dir", str(data))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 stored file(s) without a row" in checked.stdout
    left = _snapshot(uploads)
    for name, content in FOREIGN.items():
        assert left[name] == content
    assert left["sub/x.csv"] == b"x\n"
    assert (data / "tmp" / "notes.txt").read_bytes() == b"a user's temp notes\n"
    assert set(names) <= set(left)
    assert left[STORE_MARKER].decode().strip() == _store_id(data / "csvstore.db")


def test_the_data_folder_as_the_storage_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    _plant(folder, FOREIGN)
    before = _snapshot(folder)

    started = _csvstore("--data-dir", str(folder), "--storage", str(folder), "--port", "0")
    assert started.returncode == 2, started.stdout + started.stderr
    assert f"the storage folder {folder} holds the database" in started.stderr
    checked = _csvstore("check", "--data-dir", str(folder), "--storage", str(folder))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "check refused" in checked.stderr
    assert "holds the database" in checked.stderr
    assert "Traceback" not in started.stderr + checked.stderr
    assert _snapshot(folder) == before  # nothing removed, and no database created there


def test_the_current_folder_as_storage_removes_nothing(tmp_path: Path) -> None:
    project = tmp_path / "project"
    _plant(project, PROJECT)
    _make_old(project)
    before = _snapshot(project)

    # The data folder defaults to the current one too: the database would be in the storage.
    started = _csvstore("--storage", ".", "--port", str(free_port()), cwd=project)
    assert started.returncode == 2, started.stdout + started.stderr
    assert "holds the database" in started.stderr
    assert _snapshot(project) == before

    # With a data folder elsewhere it serves, and leaves the project's files alone.
    data = tmp_path / "data"
    names = _deployment(data, "--storage", str(project))
    _make_old(project)
    checked = _csvstore("check", "--data-dir", str(data), "--storage", str(project))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    left = _snapshot(project)
    assert {k: left[k] for k in before} == before
    assert set(left) - set(before) - {STORE_MARKER} == set(names)


def test_a_check_with_another_database_is_refused_and_removes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    names = _deployment(data)
    other = tmp_path / "other"
    _deployment(other, count=1)  # another store, with an id of its own
    _make_old(data)
    before = _snapshot(data / "uploads")
    assert set(names) <= set(before)

    # A forgotten --data-dir: the database the check would create is new and empty.
    empty = tmp_path / "elsewhere"
    forgotten = _csvstore("check", "--data-dir", str(empty), "--storage", str(data / "uploads"))
    assert forgotten.returncode == 2, forgotten.stdout + forgotten.stderr
    assert f"no database at {empty / 'csvstore.db'}" in forgotten.stderr
    assert not empty.exists()
    # An empty database that does exist: its storage belongs to a store it never recorded.
    empty.mkdir()
    sqlite3.connect(empty / "csvstore.db").close()
    wrong_empty = _csvstore("check", "--data-dir", str(empty), "--storage", str(data / "uploads"))
    assert wrong_empty.returncode == 2, wrong_empty.stdout + wrong_empty.stderr
    assert "which this database never recorded" in wrong_empty.stderr
    # Another store's database: two different ids.
    wrong = _csvstore("check", "--data-dir", str(other), "--storage", str(data / "uploads"))
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert f"belongs to store {_store_id(other / 'csvstore.db')}" in wrong.stderr
    # The server refuses the same pair at start-up.
    storage = str(data / "uploads")
    started = _csvstore("--data-dir", str(other), "--storage", storage, "--port", str(free_port()))
    assert started.returncode == 2, started.stdout + started.stderr
    assert "refusing to start" in started.stderr
    assert _snapshot(data / "uploads") == before

    right = _csvstore("check", "--data-dir", str(data))
    assert right.returncode == 0, right.stdout + right.stderr


def _forget_store_id(data: Path) -> None:
    """Make a deployment look like one from before the store id (migration 0005)."""
    (data / "uploads" / STORE_MARKER).unlink()
    with sqlite3.connect(data / "csvstore.db") as conn:
        conn.execute("DROP TABLE store_identity")
        conn.execute("DELETE FROM schema_migrations WHERE version = 5")


def test_a_deployment_from_before_the_store_id_is_adopted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    names = _deployment(data)
    _forget_store_id(data)
    _plant(data / "uploads", FOREIGN)
    _make_old(data)

    server = ServerProcess(data)
    server.start()
    try:
        listed = requests.get(f"{server.url}/api/csv/sessions/s1", timeout=10).json()
        assert sorted(f["filename"] for f in listed["csv_files"]) == sorted(names)
    finally:
        assert server.stop() == 0
    recorded = _store_id(data / "csvstore.db")
    assert recorded is not None
    assert (data / "uploads" / STORE_MARKER).read_text().strip() == recorded
    left = _snapshot(data / "uploads")
    assert set(names) | set(FOREIGN) | {STORE_MARKER} == set(left)
    checked = _csvstore("check", "--data-dir", str(data))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_pair_without_ids_that_does_not_look_like_one_store_is_refused(tmp_path: Path) -> None:
    """An empty database beside stored files is refused; ``check --repair`` after a look
    records them as one store and removes the files."""
    data = tmp_path / "data"
    names = _deployment(data)
    _forget_store_id(data)
    with sqlite3.connect(data / "csvstore.db") as conn:
        conn.execute("DELETE FROM files")
    _make_old(data)
    before = _snapshot(data / "uploads")

    started = _csvstore("--data-dir", str(data), "--port", str(free_port()))
    assert started.returncode == 2, started.stdout + started.stderr
    assert "the database lists no files, but the storage holds 2" in started.stderr
    assert "check --repair" in started.stderr
    checked = _csvstore("check", "--data-dir", str(data))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert _snapshot(data / "uploads") == before
    assert _store_id(data / "csvstore.db") is None

    repaired = _csvstore("check", "--repair", "--data-dir", str(data))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    left = set(_snapshot(data / "uploads"))
    assert left == {STORE_MARKER}
    assert not set(names) & left


def test_an_empty_database_beside_its_own_stored_files_removes_nothing(tmp_path: Path) -> None:
    """Same store id, but the database lists no files: the check keeps the files, says so
    and exits 1; ``--repair`` removes them. The start-up check keeps them and serves."""
    data = tmp_path / "data"
    names = _deployment(data)
    with sqlite3.connect(data / "csvstore.db") as conn:
        conn.execute("DELETE FROM files")
    _make_old(data)

    checked = _csvstore("check", "--data-dir", str(data))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "the database lists no files, so the 2 stored file(s) were kept" in checked.stdout
    server = ServerProcess(data)
    server.start()
    assert server.stop() == 0
    assert set(names) <= set(_snapshot(data / "uploads"))

    repaired = _csvstore("check", "--repair", "--data-dir", str(data))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert set(_snapshot(data / "uploads")) == {STORE_MARKER}


def test_instances_starting_together_agree_on_one_store_id(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "csvstore.db").close()  # the check wants a database to check
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSVSTORE_")}
    checks = [
        subprocess.Popen(
            [sys.executable, "-m", "csvstore", "check", "--data-dir", str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=60)[0].decode() for proc in checks]
    assert [proc.returncode for proc in checks] == [0] * 4, outputs
    recorded = _store_id(data / "csvstore.db")
    assert recorded is not None
    assert (data / "uploads" / STORE_MARKER).read_text().strip() == recorded
    assert sorted(p.name for p in (data / "uploads").iterdir()) == [STORE_MARKER]
    assert uuid.UUID(hex=recorded)


def test_migrate_to_gives_the_target_a_store_id_of_its_own(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    names = _deployment(old)
    done = _csvstore("migrate-to", "--from-data-dir", str(old), "--data-dir", str(new))
    assert done.returncode == 0, done.stdout + done.stderr
    source, target = _store_id(old / "csvstore.db"), _store_id(new / "csvstore.db")
    assert source is not None
    assert target is not None
    assert source != target
    assert (new / "uploads" / STORE_MARKER).read_text().strip() == target
    assert set(_snapshot(new / "uploads")) == {*names, STORE_MARKER}
    # So the new database with the old folder is refused, not reconciled.
    mixed = _csvstore("check", "--data-dir", str(new), "--storage", str(old / "uploads"))
    assert mixed.returncode == 2, mixed.stdout + mixed.stderr
    assert "belongs to store" in mixed.stderr
