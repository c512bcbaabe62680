"""Parsed rows of a stored file from any data-row offset, seeking to the nearest checkpoint
of its profile (:func:`csvstore.analysis.profile.read_page`) in a worker thread that pulls
the bytes from storage in chunks: memory stays bounded on any backend."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from csvstore.analysis.pages import RowsPage, read_page
from csvstore.errors import NotProfiled
from csvstore.model import StoredFile
from csvstore.storage.local import Storage


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """The part of a file's row that ``iter_rows_from`` needs (its ``RowSource``)."""

    encoding: str
    delimiter: str
    quotechar: str
    checkpoints: Sequence[tuple[int, int]]
    skip_initial_space: bool = False
    comment_char: str | None = None
    escape_char: str | None = None


class StorageFile(io.RawIOBase):
    """A read-only, seekable file over a stored object, for code in a worker thread: reads
    come from a ``storage.read`` stream on the event loop; a seek starts a new one."""

    def __init__(self, storage: Storage, key: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._storage = storage
        self._key = key
        self._loop = loop
        self._position = 0
        self._stream: AsyncIterator[bytes] | None = None
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute and relative seeks")
        if offset != self._position or self._stream is None:
            self._close_stream()
            self._position = offset
        return self._position

    def readinto(self, target: Any) -> int:
        view = memoryview(target).cast("B")
        if not self._buffer:
            if self._stream is None:
                self._stream = self._storage.read(self._key, self._position)
            self._buffer = asyncio.run_coroutine_threadsafe(
                _next_chunk(self._stream), self._loop
            ).result()
            if not self._buffer:
                return 0
        size = min(len(view), len(self._buffer))
        view[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        self._position += size
        return size

    def _close_stream(self) -> None:
        stream, self._stream, self._buffer = self._stream, None, b""
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            asyncio.run_coroutine_threadsafe(closer(), self._loop).result()

    def close(self) -> None:
        if not self.closed:
            self._close_stream()
        super().close()


async def _next_chunk(stream: AsyncIterator[bytes]) -> bytes:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return b""


async def read_rows(
    storage: Storage,
    file: StoredFile,
    offset: int,
    limit: int,
    *,
    max_bytes: int,
    cell_limit: int,
) -> RowsPage:
    """Up to ``limit`` data rows from data-row ``offset``, at most ``max_bytes`` parsed."""
    if file.delimiter is None or file.encoding is None:
        raise NotProfiled(
            "this file was stored without a CSV profile, so its rows cannot be served; "
            "download its content instead"
        )
    profile = StoredProfile(
        encoding=file.encoding,
        delimiter=file.delimiter,
        quotechar=file.quotechar or '"',
        checkpoints=[(int(row), int(at)) for row, at in file.row_checkpoints or []],
        skip_initial_space=bool(file.skip_initial_space),
        comment_char=file.comment_char,
        escape_char=file.escape_char,
    )
    loop = asyncio.get_running_loop()

    def parse() -> RowsPage:
        with io.BufferedReader(StorageFile(storage, file.file_path, loop), 256 * 1024) as fp:
            return read_page(
                fp,
                profile,
                offset,
                limit,
                max_bytes=max_bytes,
                cell_limit=cell_limit,
                row_count=file.row_count,
                line_terminator=file.line_terminator,
            )

    return await asyncio.to_thread(parse)
