"""Failures on the way: disk and database errors, dropped clients, unknown routes.

Every one ends in the same error shape and leaves no byte and no row behind.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from csvstore.config import Settings
from csvstore.db.repo import Repo
from csvstore.resumable.local import PartialState
from csvstore.service import CsvStore
from csvstore.storage import local as local_storage
from csvstore.storage.local import LocalStorage, LocalWriter
from csvstore.uploads import UploadLimits
from csvstore.web.ingest import _discard, _FileStream, _Form
from tests.conftest import (
    BOUNDARY,
    Client,
    MakeClient,
    assert_consistent,
    assert_problem,
    csv_bytes,
    stored_names,
    stored_state,
    upload_form,
)


async def test_unknown_route_and_method_are_problem_json(client: Client) -> None:
    body = await assert_problem(await client.get("/api/csv/nothing"), 404)
    assert "/api/csv/nothing" in body["detail"]
    resp = await client.put("/api/csv/sessions")
    body = await assert_problem(resp, 405)
    assert "PUT" in body["detail"]
    assert "POST" in resp.headers["Allow"]


@pytest.mark.local_storage
@pytest.mark.parametrize(
    ("err", "status"), [(errno.ENOSPC, 507), (errno.EIO, 500)], ids=["disk-full", "io-error"]
)
async def test_storage_error_while_writing_leaves_nothing(
    client: Client,
    session: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    status: int,
) -> None:
    async def failing_write(self: LocalWriter, chunk: bytes) -> None:
        raise OSError(err, "simulated")

    monkeypatch.setattr(LocalWriter, "write", failing_write)
    resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes()))
    body = await assert_problem(resp, status)
    assert "simulated" not in body["detail"]  # internals never reach the client
    if status == 507:
        assert "disk is full" in body["detail"]
        assert resp.headers["Retry-After"] == "60"
    else:
        assert "Retry-After" not in resp.headers  # a server fault: no promise it passes
    assert stored_state(settings) == (set(), set(), [])


@pytest.mark.local_storage
@pytest.mark.parametrize("failing_block", [1, 3])
async def test_storage_error_mid_stream_leaves_nothing(
    client: Client,
    session: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    failing_block: int,
) -> None:
    """A large upload's blocks are written while the next one is received: a write that
    fails, first block or later, still ends in a 507 with no byte left and no thread still
    writing into a removed file."""
    original = LocalWriter.write
    writes = 0

    async def write_then_fail(self: LocalWriter, chunk: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes == failing_block:
            await asyncio.sleep(0.05)  # still in flight when the next block arrives
            raise OSError(errno.ENOSPC, "simulated")
        await original(self, chunk)

    monkeypatch.setattr(LocalWriter, "write", write_then_fail)
    data = csv_bytes(200_000)  # several chunks
    assert len(data) > 4 * settings.upload_chunk_size
    await assert_problem(await client.post("/api/csv/upload", data=upload_form(data)), 507)
    assert writes >= failing_block
    assert stored_state(settings) == (set(), set(), [])


async def test_not_a_csv_block_mid_stream_while_another_is_written(
    client: Client, session: str, settings: Settings
) -> None:
    """A NUL in the fourth block is refused while the third is still being written."""
    data = csv_bytes(200_000)
    cut = 3 * settings.upload_chunk_size + 10
    data = data[:cut] + b"\x00" + data[cut + 1 :]
    body = await assert_problem(await client.post("/api/csv/upload", data=upload_form(data)), 400)
    assert "NUL" in body["detail"]
    assert stored_state(settings) == (set(), set(), [])


@pytest.mark.parametrize("cancels", [1, 2])
async def test_cancelled_upload_waits_for_its_threads_then_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancels: int
) -> None:
    """A client that goes away cancels its request while a block is still being written:
    the temp file must not be removed under the writing thread (or re-created after), even
    when a second cancel (a shutdown) comes during the clean-up."""
    real_open = local_storage._create_temp

    def slow_open(path: Path) -> int:
        time.sleep(0.3)  # a slow disk: the temp file is opened in a thread meanwhile
        return real_open(path)

    monkeypatch.setattr(local_storage, "_create_temp", slow_open)
    storage = LocalStorage(tmp_path / "uploads", tmp_path / "tmp", fsync=False)
    await storage.prepare()
    limits = UploadLimits(max_upload_size=1 << 30, chunk_size=512 * 1024, read_timeout=5)
    form = _Form(cast(CsvStore, None), limits)
    form.writer = await storage.begin("k1")
    form._file = _FileStream(form.writer, storage, limits)
    block = b"a,b,c\n" * (512 * 1024 // 6 + 1)
    aborted = asyncio.Event()
    real_abort = form.writer.abort

    async def abort() -> None:
        await real_abort()
        aborted.set()

    monkeypatch.setattr(form.writer, "abort", abort)

    async def request() -> None:
        assert form._file is not None
        try:
            await form._file.feed(block)  # in flight: the temp file is being opened
            await form._file.feed(block)  # waits for the first block
            await asyncio.sleep(10)
        finally:  # as receive_upload's
            await _discard(form.discard())

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.1)
    for _ in range(cancels):
        task.cancel()
        await asyncio.sleep(0.05)
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(aborted.wait(), 5)
    await asyncio.sleep(0.5)  # nothing comes back after the abort
    assert list((tmp_path / "tmp").iterdir()) == []
    assert stored_names(tmp_path / "uploads") == []


async def test_upload_cancelled_while_its_temp_file_opens_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small reads: the second one opens the temp file, in a worker thread, from the
    request itself. A request cancelled during that open must not leave the file (created
    after the clean-up looked for it) nor its descriptor behind."""
    real_open = local_storage._create_temp
    opened: list[int] = []

    def slow_open(path: Path) -> int:
        time.sleep(0.3)
        fd = real_open(path)
        opened.append(fd)
        return fd

    monkeypatch.setattr(local_storage, "_create_temp", slow_open)
    storage = LocalStorage(tmp_path / "uploads", tmp_path / "tmp", fsync=False)
    await storage.prepare()
    writer = await storage.begin("k2")

    # The first block is held, the second opens the temp file: cancelled during the open.
    await _cancel_while_writing(writer, [b"a,b\n" * 100, b"1,2\n" * 100])
    await asyncio.sleep(0.5)  # nothing comes back after the abort
    assert list((tmp_path / "tmp").iterdir()) == []
    assert len(opened) == 1
    assert not Path(f"/proc/self/fd/{opened[0]}").exists()


async def test_upload_cancelled_while_a_block_is_written_closes_its_file_after_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block is written by a thread through the temp file's descriptor. A request
    cancelled meanwhile must not close that descriptor under the thread: its number would be
    reused by the next open, and the late write would land in that other file."""
    real_write_all = local_storage.write_all
    writes: list[tuple[int, str]] = []  # (fd, the file it named when the write ended)

    def slow_write_all(fd: int, data: bytes) -> None:
        time.sleep(0.3)  # a slow disk
        real_write_all(fd, data)
        writes.append((fd, os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))

    monkeypatch.setattr(local_storage, "write_all", slow_write_all)
    storage = LocalStorage(tmp_path / "uploads", tmp_path / "tmp", fsync=False)
    await storage.prepare()
    writer = await storage.begin("k3")

    # A block past the held one's size: a thread writes it, cancelled meanwhile.
    await _cancel_while_writing(writer, [b"1,2\n" * 100_000])
    assert [name for _fd, name in writes] == ["k3.part"]  # the abort waited for the write
    assert not Path(f"/proc/self/fd/{writes[0][0]}").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


async def _cancel_while_writing(writer: LocalWriter, blocks: list[bytes]) -> None:
    """A request writing ``blocks``, cancelled 0.1 s in; its clean-up is receive_upload's."""

    async def request() -> None:
        try:
            for block in blocks:
                await writer.write(block)
            await asyncio.sleep(10)
        finally:
            await _discard(writer.abort())

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.1)  # a thread is opening or writing
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.local_storage
async def test_storage_error_while_publishing_leaves_nothing(
    client: Client, session: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = LocalWriter.commit

    async def failing_commit(self: LocalWriter) -> None:
        await self.abort()
        raise OSError(errno.EIO, "simulated")

    monkeypatch.setattr(LocalWriter, "commit", failing_commit)
    await assert_problem(await client.post("/api/csv/upload", data=upload_form(csv_bytes())), 500)
    assert stored_state(settings) == (set(), set(), [])
    monkeypatch.setattr(LocalWriter, "commit", original)
    assert (await client.post("/api/csv/upload", data=upload_form(csv_bytes()))).status == 201


@pytest.mark.local_storage
async def test_a_full_disk_while_a_tus_creation_writes_its_state_leaves_nothing(
    client: Client, session: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state's temp file is open when the write fails: it and the empty data file used
    to stay in tmp/tus until a restart's check, for a creation the client was refused."""

    def full_disk(self: PartialState) -> bytes:
        raise OSError(errno.ENOSPC, "simulated")

    monkeypatch.setattr(PartialState, "to_json", full_disk)
    meta = "session_id czE=,filename ZC5jc3Y="  # "s1", "d.csv"
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": "10", "Upload-Metadata": meta}
    await assert_problem(await client.post("/api/csv/tus/", headers=headers), 507)
    assert list((settings.temp_dir / "tus").iterdir()) == []


async def test_database_error_on_insert_removes_the_published_file(
    client: Client, session: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_insert(self: Repo, *args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Repo, "insert_file", failing_insert)
    body = await assert_problem(
        await client.post("/api/csv/upload", data=upload_form(csv_bytes())), 500
    )
    assert "I/O" not in body["detail"]
    assert stored_state(settings) == (set(), set(), [])
    # the writer survives a failed transaction
    assert (await client.post("/api/csv/sessions", json={"session_id": "after"})).status == 201


async def test_client_gone_mid_body_leaves_nothing(
    client: Client, session: str, settings: Settings
) -> None:
    """A raw socket sends half of a large upload and closes the connection."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n{session}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    total = len(head) + 10_000_000
    writer.write(
        (
            "POST /api/csv/upload HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {total}\r\n\r\n"
        ).encode()
        + head
    )
    for _ in range(70):  # 7 MB of the promised 10 MB: more than one S3 part of 5 MiB
        writer.write(b"1,2,3,4,5,6,7,8,9\n" * 5555)
        await writer.drain()
    # wait until the server has started writing the temp file, then vanish
    for _ in range(100):
        if stored_state(settings)[2]:
            break
        await asyncio.sleep(0.02)
    assert stored_state(settings)[2], "the upload never reached the temp area"
    writer.close()
    await writer.wait_closed()
    for _ in range(200):
        if stored_state(settings) == (set(), set(), []):
            break
        await asyncio.sleep(0.02)
    assert stored_state(settings) == (set(), set(), [])
    reader.feed_eof()
    # and the service goes on
    assert (await client.post("/api/csv/upload", data=upload_form(csv_bytes()))).status == 201
    assert_consistent(settings)


@pytest.mark.local_storage
async def test_min_free_space_refuses_uploads_early(
    make_client: MakeClient, settings: Settings
) -> None:
    """With less free space than the minimum, uploads get 507; reads go on."""
    import shutil

    free = shutil.disk_usage(settings.data_dir.parent).free
    client = await make_client(replace(settings, min_free_space=free + 1024**4))
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    refused = await client.post("/api/csv/upload", data=upload_form(csv_bytes()))
    body = await assert_problem(refused, 507)
    assert "free disk space" in body["detail"]
    assert refused.headers["Retry-After"] == "60"
    assert (await client.get("/api/csv/sessions/s1")).status == 200
    assert stored_state(settings) == (set(), set(), [])


async def test_fast_durability_still_stores(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(replace(settings, durability="fast"))
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes()))
    assert resp.status == 201
    assert_consistent(settings)


async def test_an_unhandled_error_is_logged_with_its_request_id(
    client: Client, session: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The traceback's line carries the id the client got back, as a field for JSON logs
    and in the text, so one grep joins them."""

    async def broken(self: Repo, *args: Any) -> None:
        raise RuntimeError("simulated")

    monkeypatch.setattr(Repo, "insert_file", broken)
    resp = await client.post("/api/csv/upload", data=upload_form(csv_bytes()))
    await assert_problem(resp, 500)
    request_id = resp.headers["X-Request-ID"]
    errors = [r for r in caplog.records if r.getMessage().startswith("unhandled error on")]
    assert [getattr(r, "request_id", None) for r in errors] == [request_id]
    assert f"id={request_id}" in errors[0].getMessage()
