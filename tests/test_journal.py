"""The journal of small uploads (storage.py): their bytes are committed with their row, the
file itself is synced later, and a crash in between loses nothing.

Most tests drive a store opened from settings without the app, so that no background
flush runs between an upload and what the test does next; on PostgreSQL (make
test-postgres) they use its journal table.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from csvstore.analysis.stream import FileFacts
from csvstore.config import Settings
from csvstore.maintenance.reconcile import startup_check
from csvstore.model import JournalEntry
from csvstore.service import CsvStore
from csvstore.storage.local import JOURNAL_MAX, LocalStorage
from csvstore.web.keys import STORE_KEY
from csvstore.wiring import open_store
from tests.conftest import (
    Client,
    MakeClient,
    assert_consistent,
    assert_problem,
    csv_bytes,
    stored_bytes,
    stored_state,
    upload_form,
)
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.local_storage  # S3 objects are durable when written: no journal


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[CsvStore]:
    async with open_store(settings) as opened:
        await startup_check(opened)
        await opened.create_session("s1")
        yield opened


async def _journal(store: CsvStore) -> list[JournalEntry]:
    return await store.db.read(
        lambda x: store.repo.journal_entries(x, after=0, up_to=2**62, limit=1000)
    )


async def _upload(store: CsvStore, data: bytes, *, session_id: str = "s1") -> str:
    file_id, key = store.new_file_key()
    writer = await store.storage.begin(key)
    await writer.write(data)
    published = await store.publish_upload(
        writer, file_id=file_id, session_id=session_id, original_filename="a.csv",
        facts=FileFacts(),
    )  # fmt: skip
    return published.file.file_path


async def test_a_small_upload_is_journaled_until_the_flush(
    store: CsvStore, settings: Settings
) -> None:
    data = csv_bytes(20)
    key = await _upload(store, data)
    assert (settings.uploads_dir / key).read_bytes() == data  # visible at once
    [entry] = await _journal(store)
    assert (entry.file_path, entry.data) == (key, data)
    assert await store.flush_journal() == entry.seq
    assert await _journal(store) == []
    assert (settings.uploads_dir / key).read_bytes() == data
    assert await store.flush_journal() == 0  # nothing left to do
    assert_consistent(settings)


async def test_only_uploads_up_to_the_journal_limit_are_journaled(
    store: CsvStore, settings: Settings
) -> None:
    at_limit = csv_bytes(10)
    at_limit += b"9" * (JOURNAL_MAX - len(at_limit))
    over = at_limit + b"9"
    kept = await _upload(store, at_limit)
    await _upload(store, over)
    assert [entry.file_path for entry in await _journal(store)] == [kept]
    assert_consistent(settings)


async def test_fast_durability_journals_nothing(settings: Settings) -> None:
    async with open_store(replace(settings, durability="fast")) as store:
        await startup_check(store)
        await store.create_session("s1")
        key = await _upload(store, csv_bytes())
        assert await _journal(store) == []
        assert (settings.uploads_dir / key).exists()


async def test_the_startup_check_writes_journaled_files_back(
    store: CsvStore, settings: Settings
) -> None:
    """A power cut can leave an unsynced file without its folder entry (or empty)."""
    flushed, journaled = csv_bytes(5), csv_bytes(7)
    flushed_key = await _upload(store, flushed)
    await store.flush_journal()
    journaled_key = await _upload(store, journaled)
    (settings.uploads_dir / journaled_key).unlink()

    report = await startup_check(store)
    assert report.journal_restored == 1
    assert report.missing_files == []  # written back before the rows are compared
    assert (settings.uploads_dir / journaled_key).read_bytes() == journaled
    assert (settings.uploads_dir / flushed_key).read_bytes() == flushed
    assert await _journal(store) == []
    assert list(settings.temp_dir.iterdir()) == []
    assert (await startup_check(store)).journal_restored == 0


async def test_restore_replaces_a_torn_file_and_many_entries(
    store: CsvStore, settings: Settings
) -> None:
    datas = [csv_bytes(3 + i) for i in range(7)]
    keys = [await _upload(store, data) for data in datas]
    for key in keys[::2]:
        (settings.uploads_dir / key).write_bytes(b"\0" * 10)  # torn: zeros, wrong size
    for key in keys[1::2]:
        (settings.uploads_dir / key).unlink()
    assert await store.restore_journal(batch=3) == len(keys)  # pages of 3: 3 + 3 + 1
    for key, data in zip(keys, datas, strict=True):
        assert (settings.uploads_dir / key).read_bytes() == data
    assert await _journal(store) == []
    assert_consistent(settings)


async def test_entries_committed_during_a_flush_wait_for_the_next(
    store: CsvStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush forgets only entries read before its sync began: a file written while the
    sync ran may not be covered by it."""
    first = await _upload(store, csv_bytes(3))
    real_sync = store.storage.sync
    during: list[str] = []

    async def sync_while_another_upload_lands() -> None:
        during.append(await _upload(store, csv_bytes(4)))
        await real_sync()

    monkeypatch.setattr(store.storage, "sync", sync_while_another_upload_lands)
    await store.flush_journal()
    assert [entry.file_path for entry in await _journal(store)] == during
    assert first not in during
    monkeypatch.setattr(store.storage, "sync", real_sync)
    await store.flush_journal()
    assert await _journal(store) == []


async def test_a_failed_sync_writes_the_files_back_before_forgetting(
    store: CsvStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed sync may have dropped bytes the disk would not take, and a later sync would
    not say so again: the entries up to it are forgotten only once their files have been
    rewritten from the journal -- even if the first rewrite fails too."""
    data = csv_bytes(8)
    key = await _upload(store, data)
    path = settings.uploads_dir / key
    real_sync, real_restore = store.storage.sync, store.storage.restore
    syncs: list[str] = []

    async def failing_sync() -> None:
        syncs.append("failed")
        raise OSError(errno.EIO, "simulated")

    async def failing_restore(key: str, data: bytes) -> None:
        raise OSError(errno.EIO, "simulated")

    async def counted_sync() -> None:
        syncs.append("ok")
        await real_sync()

    monkeypatch.setattr(store.storage, "sync", failing_sync)
    monkeypatch.setattr(store.storage, "restore", failing_restore)
    with pytest.raises(OSError, match="simulated"):
        await store.flush_journal()
    assert [entry.file_path for entry in await _journal(store)] == [key]

    os.truncate(path, 0)  # what the failed writeback could have left
    monkeypatch.setattr(store.storage, "sync", counted_sync)
    monkeypatch.setattr(store.storage, "restore", real_restore)
    await store.flush_journal()  # a sync now would "succeed": it is not trusted
    assert syncs == ["failed"]
    assert path.read_bytes() == data
    assert await _journal(store) == []
    later = await _upload(store, csv_bytes(9))  # and then back to syncing
    await store.flush_journal()
    assert syncs == ["failed", "ok"]
    assert await _journal(store) == []
    assert (settings.uploads_dir / later).exists()


async def test_a_restore_racing_a_delete_leaves_no_file_behind(
    store: CsvStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row (and its entry) deleted, and its file removed, just before the rewrite."""
    key = await _upload(store, csv_bytes(3))
    kept = await _upload(store, csv_bytes(4))
    real_restore = store.storage.restore

    async def deleted_meanwhile(restored: str, data: bytes) -> None:
        if restored == key:
            await store.delete_file(key.removesuffix(".csv"))
        await real_restore(restored, data)

    monkeypatch.setattr(store.storage, "restore", deleted_meanwhile)
    assert await store.restore_journal() == 2
    assert not (settings.uploads_dir / key).exists()
    assert (settings.uploads_dir / kept).read_bytes() == csv_bytes(4)
    assert_consistent(settings)


async def test_a_journaled_write_replaces_a_leftover_of_a_cut_off_copy(
    store: CsvStore, settings: Settings
) -> None:
    """migrate-to writes under the source's names: a copy cut off between its file and its
    row leaves the file, and the copy run again writes it anew."""
    leftover = settings.uploads_dir / "copied.csv"
    leftover.write_bytes(b"half a cop")
    writer = await store.storage.begin("copied.csv")
    await writer.write(csv_bytes(2))
    await writer.commit()
    assert writer.journal == csv_bytes(2)
    assert leftover.read_bytes() == csv_bytes(2)
    leftover.unlink()


async def test_sequence_numbers_only_grow(store: CsvStore) -> None:
    """A cleared journal must not hand out an old number again: a flush that read "up to
    N" before another flush emptied the table would otherwise forget a newer entry."""
    await _upload(store, csv_bytes(3))
    [before] = await _journal(store)
    await store.flush_journal()
    await _upload(store, csv_bytes(4))
    [after] = await _journal(store)
    assert after.seq > before.seq


async def test_deleting_journaled_files_drops_their_entries(
    store: CsvStore, settings: Settings
) -> None:
    await store.create_session("s2")
    key = await _upload(store, csv_bytes(3))
    await _upload(store, csv_bytes(4), session_id="s2")
    assert len(await _journal(store)) == 2
    await store.delete_file(key.removesuffix(".csv"))
    assert len(await _journal(store)) == 1
    await store.delete_session("s2")
    assert await _journal(store) == []
    assert stored_state(settings) == (set(), set(), [])


async def test_the_app_flushes_the_journal_while_serving(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, journal_interval=0.2))
    store = client.app[STORE_KEY]
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    data = csv_bytes(30)
    resp = await client.post("/api/csv/upload", data=upload_form(data))
    assert resp.status == 201
    filename = (await resp.json())["file"]["filename"]
    deadline = time.monotonic() + 10
    while await _journal(store) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await _journal(store) == []
    metrics = await (await client.get("/metrics")).text()
    synced = re.search(
        r'csvstore_storage_operation_duration_seconds_count\{operation="sync"\} (\S+)', metrics
    )
    assert synced is not None
    assert float(synced[1]) >= 1  # emptied by a sync, not otherwise
    assert stored_bytes(settings, filename) == data


async def test_a_failed_journaled_write_leaves_nothing(
    client: Client, session: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, "simulated")

    monkeypatch.setattr("csvstore.storage.local.os.write", disk_full)
    await assert_problem(await client.post("/api/csv/upload", data=upload_form(csv_bytes())), 507)
    monkeypatch.setattr("csvstore.storage.local.os.write", real_write)
    assert stored_state(settings) == (set(), set(), [])
    assert await _journal(client.app[STORE_KEY]) == []


def _journal_rows(settings: Settings) -> int:
    """Entries in the journal of a server's SQLite database (WAL: read beside the server)."""
    with sqlite3.connect(settings.database_path) as conn:
        return int(conn.execute("SELECT count(*) FROM file_journal").fetchone()[0])


def _serving_without_flushes(tmp_path: Path) -> tuple[Settings, ServerProcess]:
    """A real server process whose journal is flushed only at shutdown, with session s1."""
    settings = Settings(data_dir=tmp_path / "data")
    server = ServerProcess(settings.data_dir, "--journal-interval", "1d")
    server.start()
    try:
        created = requests.post(
            f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=10
        )
        assert created.ok
    except BaseException:
        server.stop()
        raise
    return settings, server


def _upload_over_http(url: str, data: bytes) -> dict[str, str]:
    resp = requests.post(
        f"{url}/api/csv/upload",
        files={"file": ("data.csv", data)},
        data={"session_id": "s1"},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["file"]  # type: ignore[no-any-return]


def test_files_lost_with_the_page_cache_come_back_after_a_restart(tmp_path: Path) -> None:
    """The real process is killed right after its 201s, before any flush; their files are
    then removed or emptied, as a power cut could leave them. The next start-up writes them
    back from the journal, and they download byte for byte."""
    settings, server = _serving_without_flushes(tmp_path)  # the kill comes before any
    try:
        datas = [csv_bytes(10 + i) for i in range(6)]
        files = [_upload_over_http(server.url, data) for data in datas]
        assert _journal_rows(settings) == 6
        server.kill()
        for i, file in enumerate(files):
            path = settings.uploads_dir / file["filename"]
            if i % 2:
                path.unlink()
            else:
                os.truncate(path, 0)
        server.start()
        for file, data in zip(files, datas, strict=True):
            got = requests.get(f"{server.url}/api/csv/files/{file['id']}/content", timeout=10)
            assert got.status_code == 200
            assert got.content == data
        assert "wrote back 6 journaled file(s)" in server.log()
    finally:
        server.stop()
    assert_consistent(settings)


def test_a_clean_stop_leaves_the_journal_empty(tmp_path: Path) -> None:
    settings, server = _serving_without_flushes(tmp_path)
    try:
        _upload_over_http(server.url, csv_bytes(5))
        assert _journal_rows(settings) == 1  # only the shutdown can flush it
    finally:
        assert server.stop() == 0
    assert _journal_rows(settings) == 0


async def test_downloads_read_a_journaled_file_at_once(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    data = csv_bytes(12)
    file = (await (await client.post("/api/csv/upload", data=upload_form(data))).json())["file"]
    got = await client.get(f"/api/csv/files/{file['id']}/content")
    assert got.status == 200
    assert await got.read() == data


@pytest.mark.parametrize(
    ("release", "journaled"), [("6.1.0-18-amd64", True), ("5.8.0", True), ("5.4.0-150", False)]
)
def test_the_journal_needs_a_syncfs_that_reports_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: str, journaled: bool
) -> None:
    """Before Linux 5.8 syncfs does not report writeback errors: small files are then
    fsynced one by one, as large ones."""
    real = os.uname()
    monkeypatch.setattr(
        "csvstore.storage.local.os.uname",
        lambda: os.uname_result((real.sysname, real.nodename, release, real.version, real.machine)),
    )
    storage = LocalStorage(tmp_path / "u", tmp_path / "t", journal_max=JOURNAL_MAX)
    assert storage.journal_max == (JOURNAL_MAX if journaled else -1)
    unsynced = LocalStorage(tmp_path / "u", tmp_path / "t", fsync=False, journal_max=5)
    assert unsynced.journal_max == -1  # no fsyncs to save
