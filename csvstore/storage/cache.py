"""A local path for each stored file a query reads (DuckDB reads paths): on local storage the
file itself; on S3 a copy in a cache folder bounded in bytes, the least recently used copy
evicted first, never one a running query holds. A file in an encoding DuckDB cannot decode
is copied as UTF-8 (on any storage), invalid bytes as U+FFFD as /rows shows them."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shutil
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
        self._folder = folder / str(os.getpid())
        self._parent = folder
        self.max_bytes = max_bytes
        self._copies: OrderedDict[str, _Copy] = OrderedDict()
        self.used_bytes = 0

    async def open(self) -> None:
        await asyncio.to_thread(self._clear_dead)

    async def close(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self._folder, True)

    def _clear_dead(self) -> None:
        """Remove the copies of processes that ended (a crash leaves them), and our own."""
        if not self._parent.is_dir():
            return  # created by the first copy: a server that never copies makes no folder
        for entry in self._parent.iterdir():
            if entry.name.isdigit() and (entry == self._folder or not _alive(int(entry.name))):
                shutil.rmtree(entry, ignore_errors=True)

    def cached(self) -> list[str]:
        """The keys copied, least recently used first (for the tests and metrics)."""
        return [key for key, copy in self._copies.items() if not copy.gone]

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
        await asyncio.to_thread(self._folder.mkdir, parents=True, exist_ok=True)
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
