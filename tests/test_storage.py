"""The local folder storage's shared folder fsync (storage._FolderSync)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from csvstore import storage


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
