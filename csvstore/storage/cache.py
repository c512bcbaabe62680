"""A local path for each stored file a query reads (DuckDB reads paths): on local storage the
file itself; on S3 a copy in a cache folder bounded in bytes, the least recently used copy
evicted first, never one a running query holds. A file in an encoding DuckDB cannot decode
is copied as UTF-8 (on any storage), invalid bytes as U+FFFD as /rows shows them."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from csvstore.errors import QueryCacheFull, StoredFileUnavailable
from csvstore.storage.local import Storage

# What a query needs of a file: (storage key, size, encoding to convert from or None).
Wanted = tuple[str, int, str | None]


@dataclass(eq=False)
class _Copy:
    size: int
    users: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    gone: bool = False  # its file was deleted while in use: removed by the last user


class FilePaths:
    """``root``: the local storage folder (paths are its files); None: copies in ``folder``
    (one per process: workers share the data folder), at most ``max_bytes``."""

    def __init__(
        self, storage: Storage, *, root: Path | None, folder: Path, max_bytes: int
    ) -> None:
        self._storage = storage
        self._root = root
        # A folder per instance, held by an flock while it lives: workers (and apps in one
        # process) share the data folder, and a dead holder's folder is anyone's to remove.
        self._folder = folder / uuid.uuid4().hex
        self._parent = folder
        self._lock: int | None = None
        self.max_bytes = max_bytes
        self._copies: OrderedDict[str, _Copy] = OrderedDict()
        self.used_bytes = 0

    async def open(self) -> None:
        if self._parent.is_dir():  # else made by the first copy: no copies, no folder
            await asyncio.to_thread(self._clear_dead)

    async def close(self) -> None:
        if self._lock is not None:
            await asyncio.to_thread(self._remove, self._folder.name)
            os.close(self._lock)
            self._lock = None

    def _make_folder(self) -> None:
        self._parent.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self._parent / f"{self._folder.name}.lock", os.O_CREAT | os.O_RDWR)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._folder.mkdir()
        self._clear_dead()

    def _clear_dead(self) -> None:
        """Remove the copies of instances that ended without removing them (a crash)."""
        for entry in self._parent.iterdir():
            if entry.suffix != ".lock" or entry.stem == self._folder.name:
                continue
            fd = os.open(entry, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # alive
            else:
                self._remove(entry.stem)
            finally:
                os.close(fd)

    def _remove(self, name: str) -> None:
        shutil.rmtree(self._parent / name, ignore_errors=True)
        (self._parent / f"{name}.lock").unlink(missing_ok=True)

    def cached(self) -> list[str]:
        """The keys copied, least recently used first (for the tests and metrics)."""
        return [key for key, copy in self._copies.items() if not copy.gone]

    def copies(self, files: Sequence[Wanted]) -> bool:
        """Whether ``paths`` would copy any of ``files`` (S3, or made UTF-8)."""
        return any(self._root is None or encoding is not None for _, _, encoding in files)

    @contextlib.asynccontextmanager
    async def paths(self, files: Sequence[Wanted]) -> AsyncIterator[list[str]]:
        """Local paths of (storage key, size, encoding to convert to UTF-8 from or None),
        valid until the block ends."""
        held: list[str] = []
        found: list[str] = []
        try:
            for key, size, encoding in files:
                if self._root is not None and encoding is None:
                    found.append(str(self._root / key))
                    continue
                name = key if encoding is None else f"{key}.utf-8"
                await self._acquire(name, key, size, encoding)
                held.append(name)
                found.append(str(self._folder / name))
            yield found
        finally:
            for name in held:
                self._release(name)

    async def _acquire(self, name: str, key: str, size: int, encoding: str | None) -> None:
        copy = self._copies.get(name)
        if copy is not None and copy.gone:
            raise StoredFileUnavailable(f"the stored file {key} was deleted")
        if copy is not None:
            copy.users += 1
            self._copies.move_to_end(name)
            await copy.ready.wait()
            if copy.failed:
                copy.users -= 1
                raise StoredFileUnavailable(f"the stored file {key} could not be read")
            return
        self._make_room(size)
        copy = _Copy(size, users=1)
        self._copies[name] = copy
        self.used_bytes += size
        try:
            written = await self._download(name, key, encoding)
        except BaseException:
            copy.failed = True
            copy.users -= 1
            self._drop(name)
            raise
        finally:
            copy.ready.set()
        self.used_bytes += written - copy.size  # a UTF-8 copy may differ in size
        copy.size = written

    def _make_room(self, size: int) -> None:
        if size > self.max_bytes:
            raise QueryCacheFull(
                f"a file of {size} bytes is larger than the query cache "
                f"(--query-cache-size {self.max_bytes} bytes)",
                retry_after=None,
            )
        for key in [k for k, c in self._copies.items() if c.users == 0]:
            if self.used_bytes + size <= self.max_bytes:
                break
            self._drop(key)
        if self.used_bytes + size > self.max_bytes:
            raise QueryCacheFull(
                "the query cache (--query-cache-size) is full of files running queries read"
            )

    async def _download(self, name: str, key: str, encoding: str | None) -> int:
        """Copy (or convert) one stored file; the bytes written."""
        if self._lock is None:
            await asyncio.to_thread(self._make_folder)
        temp = self._folder / f".{name}.part"
        decoder = None if encoding is None else codecs.getincrementaldecoder(encoding)("replace")
        written = 0
        handle = await asyncio.to_thread(open, temp, "wb")
        try:
            async for chunk in self._storage.read(key):
                if decoder is not None:
                    chunk = decoder.decode(chunk).encode()
                written += len(chunk)
                await asyncio.to_thread(handle.write, chunk)
            if decoder is not None:
                tail = decoder.decode(b"", final=True).encode()
                written += len(tail)
                handle.write(tail)
        except BaseException:
            handle.close()
            temp.unlink(missing_ok=True)
            raise
        handle.close()
        await asyncio.to_thread(os.replace, temp, self._folder / name)
        return written

    def _release(self, key: str) -> None:
        copy = self._copies.get(key)
        if copy is None:
            return
        copy.users -= 1
        if copy.users == 0 and copy.gone:
            self._drop(key)

    def _drop(self, key: str) -> None:
        copy = self._copies.pop(key, None)
        if copy is not None:
            self.used_bytes -= copy.size
            (self._folder / key).unlink(missing_ok=True)

    def forget(self, keys: Sequence[str]) -> None:
        """The files are deleted: their copies go now, or when their last query ends."""
        for key in [n for k in keys for n in (k, f"{k}.utf-8")]:
            copy = self._copies.get(key)
            if copy is None:
                continue
            if copy.users:
                copy.gone = True
            else:
                self._drop(key)
