"""The local folder storage's shared folder fsync (storage._FolderSync)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from csvstore.storage import local as storage


def test_concurrent_renames_share_folder_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def slow_fsync(path: Path) -> None:
        calls.append(time.monotonic())
        time.sleep(0.01)  # long enough for the other callers to queue behind it

    monkeypatch.setattr(storage, "fsync_dir", slow_fsync)
    folder = storage._FolderSync(tmp_path)
    waits: list[tuple[float, float]] = []  # (called, returned) of each caller

    def publish() -> None:
        called = time.monotonic()
        folder.sync()
        waits.append((called, time.monotonic()))

    threads = [threading.Thread(target=publish) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(waits) == 32
    assert 1 <= len(calls) < 32  # shared: fewer fsyncs than callers
    # Every caller returned only after an fsync that began after it called.
    for called, returned in waits:
        assert any(called <= call <= returned for call in calls)


def test_a_failed_folder_fsync_reaches_its_caller_and_the_next_one_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = iter([OSError("EIO"), None])

    def flaky_fsync(path: Path) -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    monkeypatch.setattr(storage, "fsync_dir", flaky_fsync)
    folder = storage._FolderSync(tmp_path)
    with pytest.raises(OSError, match="EIO"):
        folder.sync()
    folder.sync()  # not wedged: a new fsync runs and succeeds
    assert next(outcomes, "exhausted") == "exhausted"


async def test_a_read_cancelled_while_its_file_opens_closes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open runs in a worker thread; a reader cancelled meanwhile (a client gone, the
    server stopping) must not leave the file it opens open."""
    local = storage.LocalStorage(tmp_path / "u", tmp_path / "t")
    local.root.mkdir()
    (local.root / "f.csv").write_bytes(b"a\n1\n")
    opened: list[BinaryIO] = []
    real_open = storage._open_binary

    def slow_open(path: Path) -> BinaryIO:
        time.sleep(0.3)
        handle = real_open(path)
        opened.append(handle)
        return handle

    monkeypatch.setattr(storage, "_open_binary", slow_open)

    async def read_all() -> None:
        async for _ in local.read("f.csv"):
            pass

    reader = asyncio.create_task(read_all())
    await asyncio.sleep(0.1)  # the thread is opening
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    deadline = time.monotonic() + 5
    while not (opened and opened[0].closed) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(opened) == 1
    assert opened[0].closed
