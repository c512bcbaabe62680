"""Where the bytes of stored files live.

An upload is written through a :class:`StorageWriter`: bytes stream into a temporary
object, and only :meth:`StorageWriter.commit` makes them visible under their key, whole
and durable. :meth:`StorageWriter.abort` leaves nothing behind. Keys are the stored file
names (``<uuid>.csv``); the original names live only in the database.

The journal. On a local disk a durable file costs three flushes: its bytes, its folder
entry, and the database row that lists it. For a small upload (up to ``JOURNAL_MAX``) the
first two are replaced by the third: the writer puts the bytes under their final name
without an fsync and hands them back as :attr:`StorageWriter.journal`; the caller commits
them with the file's row (the ``file_journal`` table), so the database's one fsync -- shared
by every upload in its group commit -- is what makes the 201 durable. Every second or so
:meth:`Storage.sync` makes the files on disk durable (one ``syncfs``) and the journal entries
written before it are deleted; after a crash the start-up check writes back whatever is
still in the journal (:meth:`Storage.restore`). Measured: bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Protocol

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from csvstore.crashpoints import crash_point

log = logging.getLogger("csvstore.storage")

TEMP_SUFFIX = ".part"
# The only names csvstore gives stored files (CsvStore.new_file_key; a tus upload's file id
# is a UUID too): listing, the check and its removals never look at any other name.
STORED_NAME = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.csv\Z")
# The storage's half of the store id (csvstore/identity.py), beside the stored files.
STORE_MARKER = ".csvstore-store-id"
# What may be in the temp folder: csvstore's temp files, and the readiness probe's.
_TEMP_NAME = re.compile(r"^(.*\.part|\.probe-\d+)$")
# A first block up to this size is held for the one-hop write of a small upload; a bigger
# one goes straight to disk, so memory per upload stays one block.
HELD_BLOCK = 256 * 1024
# Downloads move 1 MiB per thread hop: few hops, bounded memory per reader.
READ_CHUNK = 1024 * 1024
# Uploads up to this size go through the journal (module docstring). Their file is written
# on the event loop: a page-cache write of at most this much costs less than the thread hop
# that would carry it.
JOURNAL_MAX = 64 * 1024


class StorageWriter(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def size(self) -> int:
        """Bytes written so far."""
        ...

    @property
    def journal(self) -> bytes | None:
        """After commit: the bytes, if they are visible but not yet durable. The caller must
        commit them to the journal with the file's row (module docstring); None otherwise."""
        ...

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class Storage(Protocol):
    async def prepare(
        self, *, temp_min_age: float = 0.0, abandoned: frozenset[str] = frozenset()
    ) -> int:
        """Create what is missing; remove temp objects older than ``temp_min_age`` seconds,
        and those of the stored names in ``abandoned`` (their process is known dead) at any
        age where the storage can tell them (S3: a multipart upload has its final key)."""
        ...

    async def begin(self, key: str) -> StorageWriter: ...

    def read(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The stored bytes from ``start``, ``length`` of them (all by default), in chunks."""
        ...

    async def delete(self, keys: list[str]) -> None: ...

    async def sync(self) -> None:
        """Make durable every file committed so far, journaled ones included."""
        ...

    async def restore(self, key: str, data: bytes) -> None:
        """Write ``data`` durably as the stored file ``key``, replacing what is there."""
        ...

    async def keys(self) -> set[str]:
        """The stored files: only names shaped like csvstore's (``STORED_NAME``)."""
        ...

    async def read_store_id(self) -> str | None:
        """The store id recorded in this storage (``STORE_MARKER``), or None."""
        ...

    async def create_store_id(self, store_id: str) -> str:
        """Record ``store_id`` unless an id is recorded already (another instance's, a
        moment earlier: the create is conditional); the id recorded now."""
        ...

    async def stat(self, key: str) -> tuple[int, float] | None:
        """(size, modification time) of a stored file, or None if there is none."""
        ...

    def free_bytes(self) -> int | None:
        """Bytes free where uploads are written, or None where that is not a concern."""
        ...

    async def probe_writable(self) -> None:
        """Raise unless a new object can be written and removed (the readiness probe)."""
        ...


def fsync_dir(path: Path) -> None:
    """Make the entries of a folder (a rename into it, a removal) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FolderSync:
    """fsync of one folder, shared by every rename made before it began.

    A rename is durable once an fsync of its folder that began after the rename has
    completed. Concurrent publishes wait for such an fsync rather than each issuing their
    own, so under load one fsync covers every rename made while the previous one ran.
    Called from worker threads.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._cond = threading.Condition()
        self._begun = 0  # fsyncs begun so far
        self._done = 0  # the latest of them known complete
        self._running = False

    def sync(self) -> None:
        with self._cond:
            needed = self._begun + 1  # the next fsync to begin covers the caller's rename
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
    """Whether a sync failure is reliably reported: the journal depends on it.

    syncfs(2) reports writeback errors (a page that could not be written is then dropped
    from memory) since Linux 5.8; before, and where there is no syncfs, a sync that lost
    bytes would look like one that did not.
    """
    if _syncfs() is None:
        return False
    version = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return version is not None and (int(version[1]), int(version[2])) >= (5, 8)


def _sync_filesystem(fd: int) -> None:
    """syncfs(2) on the filesystem of the open folder ``fd``: every file's data and
    metadata to stable storage; an OSError if writeback failed since ``fd`` last asked."""
    syncfs = _syncfs()
    assert syncfs is not None  # journal_supported() said so
    if syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


async def _open_for_reading(path: Path) -> BinaryIO:
    """``open(path, "rb")`` in a worker thread. A caller cancelled while the thread opens
    (a client gone, the server stopping) does not leave the file open: it is closed as soon
    as the open completes."""
    opening = asyncio.ensure_future(asyncio.to_thread(_open_binary, path))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")  # closed by the reader, or by _close_opened


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _write_new_file(path: Path, data: bytes, *, fsync: bool, exclusive: bool = True) -> None:
    """Create ``path`` (it must not exist, unless not ``exclusive``) holding ``data``;
    fsynced if asked. On a failed write (a full disk) the file is removed again."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


class LocalWriter:
    """One upload on its way into a local folder: ``temp/<key>.part`` -> ``root/<key>``.

    A small first block (up to HELD_BLOCK) is held until a second arrives: an upload that
    fits in it (most small CSVs) is then written, fsynced and renamed in a single thread hop
    at commit, instead of one hop each for open, write, fsync and close -- or, up to
    JOURNAL_MAX, written in place and journaled (module docstring). Larger uploads stream
    through aiofiles block by block.
    """

    def __init__(self, storage: LocalStorage, key: str) -> None:
        self.key = key
        self.size = 0
        self.journal: bytes | None = None
        self._storage = storage
        self._handle: AsyncBufferedIOBase | None = None
        # The temp file's open, while a worker thread runs it: a request cancelled meanwhile
        # leaves it running, and abort must wait for it (or it re-creates the file after).
        self._opening: asyncio.Future[AsyncBufferedIOBase] | None = None
        self._first: bytes | None = None
        self._temp_path = storage.temp_dir / (key + TEMP_SUFFIX)
        self._closed = False

    async def write(self, chunk: bytes) -> None:
        if self._handle is None:
            if self._first is None and len(chunk) <= HELD_BLOCK:
                self._first = chunk
                self.size += len(chunk)
                return
            self._opening = asyncio.ensure_future(self._open_temp())
            self._handle = await asyncio.shield(self._opening)
            self._opening = None
            first, self._first = self._first, None
            if first is not None:
                await self._handle.write(first)
        await self._handle.write(chunk)
        self.size += len(chunk)

    async def _open_temp(self) -> AsyncBufferedIOBase:
        return await aiofiles.open(self._temp_path, "xb")

    async def commit(self) -> None:
        """fsync the bytes, rename into place, fsync the folder: then the file is durable."""
        final_path = self._storage.root / self.key
        fsync = self._storage.fsync
        temp_path = self._temp_path
        handle = self._handle
        fd = handle.fileno() if handle is not None else None
        first = self._first or b""

        folder = self._storage.folder_sync

        if fd is None and len(first) <= self._storage.journal_max:
            # Journaled: written under its final name, no fsync, on the loop (JOURNAL_MAX).
            # A failed write removes the file again; nothing is left to abort.
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
            # Plain system calls, few of them: each one hands the GIL back and waits to
            # take it again, which under load costs more than the call itself.
            if fd is None:  # never opened: the whole upload is the one block held
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
        if handle is not None:
            await handle.close()

    async def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._first = None
        if self._opening is not None:  # cancelled while the thread opened the temp file
            with contextlib.suppress(OSError):
                self._handle = await self._opening
            self._opening = None
        if self._handle is not None:
            with contextlib.suppress(OSError):
                await self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._temp_path.unlink)


class LocalStorage:
    """Files in one folder, named by key; uploads in progress in a temp folder beside it."""

    def __init__(
        self, root: Path, temp_dir: Path, *, fsync: bool = True, journal_max: int = -1
    ) -> None:
        self.root = root
        self.temp_dir = temp_dir
        self.fsync = fsync
        # Uploads up to this size are journaled; -1: none. Only where files are fsynced:
        # without fsyncs there is nothing for the journal to save.
        if not fsync:
            journal_max = -1
        elif journal_max >= 0 and not journal_supported():
            log.info("small uploads fsynced one by one: syncfs here does not report errors")
            journal_max = -1
        self.journal_max = journal_max
        # The folder held open for syncfs, from before the first journaled write on: its
        # writeback errors are reported to each open file once, from its opening on.
        self._sync_fd: int | None = None
        self.folder_sync = _FolderSync(root)
        self._free_bytes = 0
        self._free_checked_at = -1e9

    async def prepare(
        self, *, temp_min_age: float = 0.0, abandoned: frozenset[str] = frozenset()
    ) -> int:
        """Create the folders and remove temp files a crash left behind; how many were removed."""

        def run() -> int:
            self.root.mkdir(parents=True, exist_ok=True)
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            removed = 0
            cutoff = time.time() - temp_min_age
            for entry in self.temp_dir.iterdir():
                if not _TEMP_NAME.match(entry.name) or not entry.is_file():
                    continue  # not csvstore's: never removed
                if not temp_min_age or entry.stat().st_mtime < cutoff:
                    entry.unlink(missing_ok=True)
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
                handle.seek(start)  # moves an offset: no I/O
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(handle.read, want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            # Closed here, synchronously, however the reader stops: at the end, when the
            # client goes away, or when the generator is finalised.
            handle.close()

    async def delete(self, keys: list[str]) -> None:
        """Remove stored files; a file already gone is not an error (deletes are idempotent)."""
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
                temp_path.unlink()  # left by an earlier attempt that failed halfway
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
            probe = self.temp_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()

        await asyncio.to_thread(run)

    def free_bytes(self) -> int | None:
        # Asked before and during every upload: a second-old answer is good enough, and
        # saves a system call per request under load.
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
            # Written whole under a name of its own, then linked into place: link(2) fails
            # if the marker exists, and no one ever reads a half-written one.
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
