"""Where stored files' bytes live: the Storage protocol and the local folder. A writer's
commit makes an upload visible whole and durable; small ones go through the journal
(docs/design/durability.md)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from csvstore.crashpoints import crash_point

log = logging.getLogger("csvstore.storage")

TEMP_SUFFIX = ".part"
# Listing, the check and its removals never look at any other name.
STORED_NAME = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.csv\Z")
STORE_MARKER = ".csvstore-store-id"
_TEMP_NAME = re.compile(r"^(.*\.part|\.probe-\d+)$")
# A first block up to this size is held for a small upload's one-hop write.
HELD_BLOCK = 256 * 1024
READ_CHUNK = 1024 * 1024
# Uploads up to this size are journaled, written on the event loop (bench/RESULTS.md).
JOURNAL_MAX = 64 * 1024


class StorageWriter(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def holds_parts(self) -> bool:
        """Whether written bytes wait in memory for a part (S3): bounded there, no backlog."""
        ...

    @property
    def holds_upload(self) -> bool:
        """Whether its bytes are a resumable upload's only copy (S3 tus): kept on an outage."""
        ...

    @property
    def size(self) -> int: ...

    @property
    def journal(self) -> bytes | None:
        """After commit: the bytes if not yet durable, for the caller's journal; else None."""
        ...

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class Storage(Protocol):
    async def prepare(
        self, *, temp_min_age: float = 0.0, abandoned: frozenset[str] = frozenset()
    ) -> int:
        """Create what is missing; remove temp objects older than ``temp_min_age`` and, where
        the storage can tell them, those of ``abandoned`` names at any age."""
        ...

    async def begin(self, key: str) -> StorageWriter: ...

    def read(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]: ...

    async def delete(self, keys: list[str]) -> None: ...

    async def sync(self) -> None:
        """Make durable every file committed so far, journaled ones included."""
        ...

    async def restore(self, key: str, data: bytes) -> None: ...

    async def keys(self) -> set[str]: ...

    async def read_store_id(self) -> str | None: ...

    async def create_store_id(self, store_id: str) -> str:
        """Record ``store_id`` unless one is recorded (conditional create); the id now."""
        ...

    async def stat(self, key: str) -> tuple[int, float] | None: ...

    def free_bytes(self) -> int | None:
        """Bytes free where uploads are written, or None where that is not a concern."""
        ...

    async def probe_writable(self) -> None:
        """Raise unless a new object can be written and removed (the readiness probe)."""
        ...


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FolderSync:
    """fsync of one folder, shared by every rename made before it began: under load one
    fsync covers every rename made while the previous one ran. Worker threads only."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._cond = threading.Condition()
        self._begun = 0
        self._done = 0
        self._running = False

    def sync(self) -> None:
        with self._cond:
            needed = self._begun + 1
            while self._done < needed:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._begun += 1
                ticket = self._begun
                self._cond.release()
                try:
                    fsync_dir(self._path)  # a failure reaches this caller; waiters retry
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._done = ticket


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2), which Python's os module lacks; None where libc has none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def journal_supported() -> bool:
    """Whether a sync failure is reported (syncfs since Linux 5.8): the journal needs it."""
    if _syncfs() is None:
        return False
    version = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return version is not None and (int(version[1]), int(version[2])) >= (5, 8)


def _sync_filesystem(fd: int) -> None:
    """syncfs(2) on ``fd``'s filesystem; OSError if writeback failed since ``fd`` asked."""
    syncfs = _syncfs()
    assert syncfs is not None
    if syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


async def _open_for_reading(path: Path) -> BinaryIO:
    """``open(path, "rb")`` in a worker thread; closed if the caller is cancelled meanwhile."""
    opening = asyncio.ensure_future(asyncio.to_thread(_open_binary, path))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _create_temp(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    # Held while the upload streams: another process's start-up check sees it is in use.
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _remove_unless_in_use(path: Path) -> bool:
    """Remove a temp file no live writer holds (its flock); whether it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # an upload of a live process, on this data dir too
    else:
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# sync_file_range(2)'s flag: start writeback of the range's dirty pages, do not wait.
_SYNC_FILE_RANGE_WRITE = 2
# Smaller writes are left to the fsync that soon follows them: a system call each is not worth it.
WRITEBACK_MIN = 256 * 1024


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which Python's os module lacks; None where libc has none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def append_block(fd: int, offset: int, data: bytes, *, durable: bool) -> None:
    """Write ``data`` at the descriptor's position (``offset``). ``durable``: then ask the
    kernel to start writing it to disk, without waiting, so the later fsync finds little
    left to do (bench/RESULTS.md, "Write-behind": a 1 GiB fsync took 0.6 s). A hint only:
    where unsupported, nothing."""
    write_all(fd, data)
    function = _sync_file_range()
    if durable and function is not None and len(data) >= WRITEBACK_MIN:
        function(fd, offset, len(data), _SYNC_FILE_RANGE_WRITE)  # a failure: fsync reports it


def _write_new_file(path: Path, data: bytes, *, fsync: bool, exclusive: bool = True) -> None:
    """Create ``path`` holding ``data``, fsynced if asked; removed again if a write fails."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


class LocalWriter:
    """One upload: ``temp/<key>.part`` -> ``root/<key>``; an upload within its first block
    is written in one thread hop at commit (or journaled), larger ones stream."""

    holds_parts = False
    holds_upload = False

    def __init__(self, storage: LocalStorage, key: str) -> None:
        self.key = key
        self.size = 0
        self.journal: bytes | None = None
        self._storage = storage
        self._fd: int | None = None
        # A cancelled request leaves the open running: abort must wait for it.
        self._opening: asyncio.Future[int] | None = None
        # The block a thread is writing: the fd stays open until it is done (a closed fd's
        # number is reused by the next open, so a late write would land in another file).
        self._writing: asyncio.Future[None] | None = None
        self._first: bytes | None = None
        self._temp_path = storage.temp_dir / (key + TEMP_SUFFIX)
        self._closed = False

    async def write(self, chunk: bytes) -> None:
        if self._fd is None:
            if self._first is None and len(chunk) <= HELD_BLOCK:
                self._first = chunk
                self.size += len(chunk)
                return
            self._opening = asyncio.ensure_future(asyncio.to_thread(_create_temp, self._temp_path))
            self._fd = await asyncio.shield(self._opening)
            self._opening = None
            first, self._first = self._first, None
            if first is not None:
                chunk = first + chunk
                self.size -= len(first)
        loop = asyncio.get_running_loop()
        write = functools.partial(append_block, durable=self._storage.fsync)
        self._writing = loop.run_in_executor(None, write, self._fd, self.size, chunk)
        await asyncio.shield(self._writing)
        self._writing = None
        self.size += len(chunk)

    async def commit(self) -> None:
        final_path = self._storage.root / self.key
        fsync = self._storage.fsync
        temp_path = self._temp_path
        fd = self._fd
        first = self._first or b""

        folder = self._storage.folder_sync

        if fd is None and len(first) <= self._storage.journal_max:
            # Journaled: under its final name, no fsync; a failed write leaves nothing.
            self._closed = True
            self._first = None
            self._storage.watch_writeback_errors()
            try:
                _write_new_file(final_path, first, fsync=False)
            except FileExistsError:  # migrate-to resuming a copy cut off before its row
                _write_new_file(final_path, first, fsync=False, exclusive=False)
            crash_point("storage.journal_written")
            self.journal = first
            return

        def publish() -> None:
            # Few plain system calls: each gives up the GIL and waits to take it back.
            if fd is None:
                _write_new_file(temp_path, first, fsync=fsync)
            elif fsync:
                os.fsync(fd)
            crash_point("storage.file_synced")
            os.rename(temp_path, final_path)
            crash_point("storage.renamed")
            if fsync:
                folder.sync()

        try:
            await asyncio.to_thread(publish)
        except OSError:
            await self.abort()
            raise
        self._closed = True
        self._first = None
        if fd is not None:
            self._fd = None
            os.close(fd)

    async def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._first = None
        if self._opening is not None:
            with contextlib.suppress(OSError):
                self._fd = await self._opening
            self._opening = None
        if self._writing is not None:
            with contextlib.suppress(OSError):
                await self._writing
            self._writing = None
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._temp_path.unlink)


class LocalStorage:
    def __init__(
        self, root: Path, temp_dir: Path, *, fsync: bool = True, journal_max: int = -1
    ) -> None:
        self.root = root
        self.temp_dir = temp_dir
        self.fsync = fsync
        # -1: nothing journaled; without fsyncs the journal would save nothing.
        if not fsync:
            journal_max = -1
        elif journal_max >= 0 and not journal_supported():
            log.info("small uploads fsynced one by one: syncfs here does not report errors")
            journal_max = -1
        self.journal_max = journal_max
        # Open before the first journaled write: writeback errors reach it from then on.
        self._sync_fd: int | None = None
        self.folder_sync = _FolderSync(root)
        self._free_bytes = 0
        self._free_checked_at = -1e9

    async def prepare(
        self, *, temp_min_age: float = 0.0, abandoned: frozenset[str] = frozenset()
    ) -> int:
        """Create the folders and remove temp files a crash left; how many were removed."""

        def run() -> int:
            self.root.mkdir(parents=True, exist_ok=True)
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            removed = 0
            cutoff = time.time() - temp_min_age
            for entry in self.temp_dir.iterdir():
                if not _TEMP_NAME.match(entry.name) or not entry.is_file():
                    continue  # not csvstore's: never removed
                if (not temp_min_age or entry.stat().st_mtime < cutoff) and (
                    _remove_unless_in_use(entry)
                ):
                    removed += 1
            return removed

        return await asyncio.to_thread(run)

    async def begin(self, key: str) -> LocalWriter:
        return LocalWriter(self, key)

    def path_of(self, key: str) -> Path:
        return self.root / key

    async def read(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        remaining = length
        handle = await _open_for_reading(self.root / key)
        try:
            if start:
                handle.seek(start)
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(handle.read, want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            # Closed synchronously however the reader stops (client gone, finalised).
            handle.close()

    async def delete(self, keys: list[str]) -> None:
        """Remove stored files; one already gone is not an error."""
        if not keys:
            return

        def run() -> None:
            for key in keys:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / key).unlink()
            if self.fsync:
                self.folder_sync.sync()

        await asyncio.to_thread(run)

    def watch_writeback_errors(self) -> None:
        if self._sync_fd is None:
            self._sync_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    async def sync(self) -> None:
        if self.journal_max < 0:
            return  # every file was fsynced before its 201
        self.watch_writeback_errors()
        assert self._sync_fd is not None
        await asyncio.to_thread(_sync_filesystem, self._sync_fd)

    async def close(self) -> None:
        if self._sync_fd is not None:
            os.close(self._sync_fd)
            self._sync_fd = None

    async def restore(self, key: str, data: bytes) -> None:
        temp_path = self.temp_dir / f"{key}.restore-{os.getpid()}{TEMP_SUFFIX}"

        def run() -> None:
            with contextlib.suppress(FileNotFoundError):
                temp_path.unlink()
            _write_new_file(temp_path, data, fsync=True)
            try:
                os.replace(temp_path, self.root / key)
            except BaseException:
                temp_path.unlink(missing_ok=True)
                raise
            self.folder_sync.sync()

        await asyncio.to_thread(run)

    async def stat(self, key: str) -> tuple[int, float] | None:
        try:
            result = await asyncio.to_thread(os.stat, self.root / key)
        except FileNotFoundError:
            return None
        return result.st_size, result.st_mtime

    async def probe_writable(self) -> None:
        def run() -> None:
            # Both folders an upload writes: temp files, and small files written in place.
            for folder in (self.temp_dir, self.root):
                probe = folder / f".probe-{os.getpid()}"
                probe.write_bytes(b"ok")
                probe.unlink()

        await asyncio.to_thread(run)

    def free_bytes(self) -> int | None:
        # Asked on every upload: a second-old answer saves a system call per request.
        now = time.monotonic()
        if now - self._free_checked_at > 1.0:
            stats = os.statvfs(self.temp_dir)
            self._free_bytes = stats.f_bavail * stats.f_frsize
            self._free_checked_at = now
        return self._free_bytes

    async def keys(self) -> set[str]:
        def run() -> set[str]:
            if not self.root.exists():
                return set()
            return {
                entry.name
                for entry in os.scandir(self.root)
                if STORED_NAME.match(entry.name) and entry.is_file()
            }

        return await asyncio.to_thread(run)

    async def read_store_id(self) -> str | None:
        def run() -> str | None:
            try:
                return (self.root / STORE_MARKER).read_text().strip()
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(run)

    async def create_store_id(self, store_id: str) -> str:
        def run() -> str:
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / STORE_MARKER
            # Written whole, then linked: link(2) fails if the marker exists.
            new = self.root / f"{STORE_MARKER}.{os.getpid()}.{threading.get_ident()}.new"
            new.unlink(missing_ok=True)
            _write_new_file(new, f"{store_id}\n".encode(), fsync=True)
            try:
                os.link(new, marker)
            except FileExistsError:
                return marker.read_text().strip()
            finally:
                new.unlink()
            fsync_dir(self.root)
            return store_id

        return await asyncio.to_thread(run)
