"""Partial tus uploads on local storage (``<temp>/tus/``: a data file and an atomically
replaced state file, locked with flock), and the interface every partial store offers.
See docs/design/resumable.md."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import orjson

from csvstore.analysis.stream import FileFacts, UploadAnalysis
from csvstore.crashpoints import crash_point
from csvstore.errors import UploadLocked
from csvstore.storage.local import StorageWriter, append_block, fsync_dir, write_all

log = logging.getLogger("csvstore.tus")

UPLOAD_ID = re.compile(r"\A[0-9a-f]{32}\Z")
DATA_SUFFIX = ".part"
STATE_SUFFIX = ".json"
_NEW_SUFFIX = ".new"


@dataclass(frozen=True, slots=True)
class PartialState:
    id: str
    length: int
    offset: int  # bytes acknowledged so far (durable)
    session_id: str
    filename: str
    metadata: str  # the Upload-Metadata header as the client sent it, echoed by HEAD
    options: dict[str, Any]
    created_at: str
    expires_at: float  # Unix time; pushed forward whenever bytes arrive
    file_id: str | None = None  # set just before publishing: the id the file gets
    publish_key: str | None = None
    completed: bool = False  # published; kept until it expires so HEAD can say so
    # Complete, and its file is the one it made (not an identical file found in the session):
    # what a DELETE of the finished upload deletes. None: not known (settled after a crash).
    made_file: bool | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> PartialState:
        state = cls(**orjson.loads(raw))
        if not (UPLOAD_ID.match(state.id) and 0 <= state.offset <= state.length):
            raise ValueError(f"inconsistent state: {state}")
        return state


def usual_metadata(session_id: str, filename: str) -> str:
    """The Upload-Metadata a client sends with only the two keys csvstore needs."""
    encoded = [base64.b64encode(v.encode()).decode() for v in (session_id, filename)]
    return f"session_id {encoded[0]},filename {encoded[1]}"


class PartialHold(Protocol):
    """One upload, held exclusively by the request that changes it."""

    @property
    def state(self) -> PartialState: ...

    @property
    def pending(self) -> int: ...  # appended since the last checkpoint

    @property
    def holds_parts(self) -> bool: ...

    async def append(self, chunk: bytes) -> None: ...

    async def checkpoint(
        self, *, expires_at: float, last: bool = False
    ) -> PartialState: ...  # pending: durable; last: the request's, the hold ends with it

    async def rollback(self) -> None: ...

    async def save(self, state: PartialState) -> None: ...

    async def finish(self, state: PartialState) -> None: ...

    @property
    def received(self) -> int: ...

    async def analyse(
        self, *, enabled: bool, chunk_size: int, encoding: str | None = None
    ) -> FileFacts: ...

    @property
    def target(
        self,
    ) -> tuple[str, str] | None: ...  # (file id, key) fixed at creation (S3)

    @property
    def interrupted_publish(
        self,
    ) -> str | None: ...  # file id of a completion cut short

    async def abandon_publish(self) -> None: ...  # its row is not in: resumable again

    @property
    def has_all_bytes(self) -> bool: ...  # stored (S3), only the publish is missing

    def publisher(self, key: str) -> StorageWriter: ...  # commit publishes, abort removes

    async def remove(self) -> None: ...


H = TypeVar("H", bound=PartialHold)


class PartialStore(Protocol):
    async def create(self, state: PartialState) -> None: ...

    async def get(self, upload_id: str) -> PartialState | None: ...

    def hold(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[PartialHold | None]:
        """The upload, locked; None if gone or published; UploadLocked if held elsewhere."""
        ...

    async def remove(self, upload_id: str) -> bool: ...

    async def sweep_expired(self, now: float) -> int:
        """Remove expired records; the count is of unfinished ones (a finished one's is not
        an expiry)."""
        ...

    async def remove_for_sessions(self, session_ids: set[str]) -> int: ...

    async def reconcile(self, *, published: set[str], min_age: float = 0.0) -> int:
        """After a crash: settle interrupted completions, remove broken and expired uploads."""
        ...

    async def owns(self, key: str) -> bool: ...  # a stored name waiting for its publish


class LocalPartialStore:
    """Partial uploads in a folder beside the temp files (same filesystem as ``uploads/``)."""

    def __init__(self, directory: Path, publish_dir: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.publish_dir = publish_dir
        self.fsync = fsync

    def data_path(self, upload_id: str) -> Path:
        return self.directory / (upload_id + DATA_SUFFIX)

    def state_path(self, upload_id: str) -> Path:
        return self.directory / (upload_id + STATE_SUFFIX)

    def _write_state(self, state: PartialState, *, durable: bool = True) -> None:
        path = self.state_path(state.id)
        new = path.with_name(path.name + _NEW_SUFFIX)
        fsync = self.fsync and durable
        with new.open("wb") as handle:
            handle.write(state.to_json())
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(new, path)
        if fsync:
            fsync_dir(self.directory)

    @staticmethod
    def small(hold: PartialHold, limit: int) -> LocalHold | None:
        """The hold, if it is this store's and holds 1 to ``limit`` bytes."""
        return hold if isinstance(hold, _LocalHold) and 0 < hold.received <= limit else None

    def _read_state(self, upload_id: str) -> PartialState | None:
        try:
            return PartialState.from_json(self.state_path(upload_id).read_bytes())
        except FileNotFoundError:
            return None

    async def create(self, state: PartialState) -> None:
        def run() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            # The data file first: without a state, reconcile removes it.
            fd = os.open(self.data_path(state.id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            try:
                self._write_state(state)
            except BaseException:
                path = self.state_path(state.id)
                for leftover in (
                    path.with_name(path.name + _NEW_SUFFIX),
                    path,
                    self.data_path(state.id),
                ):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
                raise

        await asyncio.to_thread(run)

    def record_completed(self, state: PartialState) -> None:
        """A whole creation's state, for HEAD: not fsynced, its row is the durable record
        (ResumableUploads._completed_by_row); on the event loop, a page-cache write."""
        with contextlib.suppress(FileNotFoundError):
            _write_new(self.state_path(state.id), state.to_json())
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_new(self.state_path(state.id), state.to_json())

    async def get(self, upload_id: str) -> PartialState | None:
        if not UPLOAD_ID.match(upload_id):
            return None
        try:
            return await asyncio.to_thread(self._read_state, upload_id)
        except (ValueError, TypeError):
            log.warning("partial upload %s has an unreadable state", upload_id)
            return None

    def _lock(self, upload_id: str) -> int | None:
        path = self.data_path(upload_id)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UploadLocked(
                f"upload {upload_id} is being written by another request; retry shortly"
            ) from None
        # Maybe an inode removed or published meanwhile.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return fd

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[_LocalHold | None]:
        if not UPLOAD_ID.match(upload_id):
            yield None
            return
        fd = await asyncio.to_thread(self._lock, upload_id)
        if fd is None:
            yield None
            return
        hold: _LocalHold | None = None
        try:
            state = await asyncio.to_thread(self._read_state, upload_id)
            if state is not None and not state.completed:
                hold = _LocalHold(self, state, fd)
                if state.file_id is None:  # else maybe a stored file's bytes: settled later
                    await asyncio.to_thread(hold.settle)
            yield hold
        finally:
            os.close(fd)  # closing releases the lock

    async def remove(self, upload_id: str) -> bool:
        if not UPLOAD_ID.match(upload_id):
            return False

        def run() -> bool:
            fd = self._lock(upload_id)
            try:
                return self._remove_files(upload_id)
            finally:
                if fd is not None:
                    os.close(fd)

        return await asyncio.to_thread(run)

    def _remove_files(self, upload_id: str) -> bool:
        # The state first: a data file without a state is removed by reconcile.
        found = False
        for path in (self.state_path(upload_id), self.data_path(upload_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                found = True
        if self.fsync and found:
            fsync_dir(self.directory)
        return found

    def _ids(self) -> set[str]:
        ids: set[str] = set()
        if not self.directory.exists():
            return ids
        for entry in os.scandir(self.directory):
            stem = entry.name.split(".", 1)[0]
            if UPLOAD_ID.match(stem):
                ids.add(stem)
        return ids

    async def sweep_expired(self, now: float) -> int:
        removed = await asyncio.to_thread(self._remove_where, lambda s: s.expires_at <= now)
        return sum(not state.completed for state in removed)

    async def remove_for_sessions(self, session_ids: set[str]) -> int:
        return len(
            await asyncio.to_thread(self._remove_where, lambda s: s.session_id in session_ids)
        )

    def _remove_where(self, wanted: Callable[[PartialState], bool]) -> list[PartialState]:
        """Remove the uploads whose state is ``wanted`` under their lock; not one in use."""
        removed: list[PartialState] = []
        for upload_id in sorted(self._ids()):
            try:
                state = self._read_state(upload_id)
            except (ValueError, TypeError):
                continue  # reconcile's business
            if state is None or not wanted(state):
                continue
            try:
                fd = self._lock(upload_id)
            except UploadLocked:
                continue  # in use: its request settles it
            try:
                current = self._read_state(upload_id)
                if current is not None and wanted(current) and self._remove_files(upload_id):
                    removed.append(current)
            finally:
                if fd is not None:
                    os.close(fd)
        return removed

    async def owns(self, key: str) -> bool:
        return False  # a data file is linked into uploads/ only to be published

    async def reconcile(self, *, published: set[str], min_age: float = 0.0) -> int:
        def run() -> int:
            if not self.directory.exists():
                return 0
            removed = 0
            now = time.time()
            for entry in list(os.scandir(self.directory)):
                stem = entry.name.split(".", 1)[0]
                foreign = not UPLOAD_ID.match(stem) or entry.name.endswith(_NEW_SUFFIX)
                if foreign and now - entry.stat().st_mtime >= min_age:  # or a torn write
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    removed += 1
            for upload_id in sorted(self._ids()):
                try:
                    removed += self._reconcile_one(upload_id, published, now, min_age)
                except UploadLocked:
                    continue  # a running server is writing it: it is not broken
            return removed

        return await asyncio.to_thread(run)

    def publish_path(self, state: PartialState) -> Path:
        return self.publish_dir / (state.publish_key or f"{state.file_id}.csv")

    def _relink(self, state: PartialState) -> int | None:
        published = self.publish_path(state)
        try:
            os.link(published, self.data_path(state.id))
        except FileNotFoundError:
            return None
        if self.fsync:
            fsync_dir(self.directory)
        return self._lock(state.id)

    def _reconcile_one(
        self, upload_id: str, published: set[str], now: float, min_age: float
    ) -> int:
        paths = [self.state_path(upload_id), self.data_path(upload_id)]
        ages = [now - p.stat().st_mtime for p in paths if p.exists()]
        if ages and min(ages) < min_age:
            return 0
        fd = self._lock(upload_id)
        try:
            try:
                state = self._read_state(upload_id)
            except (ValueError, TypeError):
                state = None
            if state is None or state.expires_at <= now:
                return int(self._remove_files(upload_id))
            if state.completed:
                return 0
            if str(uuid.UUID(upload_id)) in published or (
                state.file_id is not None and state.file_id in published
            ):
                # Published, then the process died before it could record so.
                self._write_state(replace(state, offset=state.length, completed=True))
                with contextlib.suppress(FileNotFoundError):
                    self.data_path(upload_id).unlink()
                return 0
            if state.file_id is not None and fd is None:
                # Renamed by earlier versions, no row: back to the partial area.
                fd = self._relink(state)
            if fd is None:  # no data file, and nothing published: lost
                return int(self._remove_files(upload_id))
            if os.fstat(fd).st_size < state.offset:
                log.warning("partial upload %s lost acknowledged bytes; removed", upload_id)
                return int(self._remove_files(upload_id))
            return 0
        finally:
            if fd is not None:
                os.close(fd)


class _LocalHold:
    holds_parts = False

    def __init__(self, store: LocalPartialStore, state: PartialState, fd: int) -> None:
        self._store = store
        self._state = state
        self._fd = fd
        self._pending = 0
        self.published = False

    @property
    def state(self) -> PartialState:
        return self._state

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def interrupted_publish(self) -> str | None:
        return self._state.file_id

    async def abandon_publish(self) -> None:
        state = replace(self._state, file_id=None, publish_key=None)

        def run() -> None:
            published = self._store.publish_path(self._state)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(published).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(published)
            self._store._write_state(state)
            self.settle()

        await asyncio.to_thread(run)
        self._state = state

    def settle(self) -> None:
        if os.fstat(self._fd).st_size != self._state.offset:
            os.ftruncate(self._fd, self._state.offset)
        os.lseek(self._fd, self._state.offset, os.SEEK_SET)

    async def append(self, chunk: bytes) -> None:
        offset = self._state.offset + self._pending

        def run() -> None:
            # Written back as it goes: the checkpoint's fsync then finds little left to write.
            append_block(self._fd, offset, chunk, durable=self._store.fsync)
            crash_point("tus.appended")

        await asyncio.to_thread(run)
        self._pending += len(chunk)

    async def checkpoint(self, *, expires_at: float, last: bool = False) -> PartialState:
        new = replace(
            self._state,
            offset=self._state.offset + self._pending,
            expires_at=expires_at,
        )

        def run() -> None:
            if self._store.fsync:
                os.fsync(self._fd)
            crash_point("tus.checkpoint_synced")
            self._store._write_state(new)

        await asyncio.to_thread(run)
        self._state = new
        self._pending = 0
        return new

    async def rollback(self) -> None:
        self._pending = 0
        await asyncio.to_thread(self.settle)

    async def save(self, state: PartialState) -> None:
        await asyncio.to_thread(self._store._write_state, state)
        self._state = state

    async def finish(self, state: PartialState, *, durable: bool = True) -> None:
        await asyncio.to_thread(self._store._write_state, state, durable=durable)
        self._state = state
        crash_point("tus.finished")
        # Published, it is another link to them; a duplicate, they are not wanted.
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._store.data_path(state.id).unlink)

    @property
    def received(self) -> int:
        return self._state.offset + self._pending

    async def contents(self) -> bytes:
        return await asyncio.to_thread(lambda: b"".join(self.read_all(self.received)))

    def read_all(self, chunk_size: int) -> Iterator[bytes]:
        remaining = self.received
        position = 0
        while remaining > 0:
            chunk = os.pread(self._fd, min(chunk_size, remaining), position)
            if not chunk:
                raise OSError(errno.EIO, "the partial upload is shorter than it should be")
            position += len(chunk)
            remaining -= len(chunk)
            yield chunk

    async def analyse(
        self, *, enabled: bool, chunk_size: int, encoding: str | None = None
    ) -> FileFacts:
        def run() -> FileFacts:
            analysis = UploadAnalysis(enabled=enabled, encoding=encoding)
            for chunk in self.read_all(chunk_size):
                analysis.feed(chunk)
            return analysis.finish()

        return await asyncio.to_thread(run)

    @property
    def target(self) -> tuple[str, str] | None:
        return None

    @property
    def has_all_bytes(self) -> bool:
        return False  # a renamed data file is settled by the start-up check

    def publisher(self, key: str) -> StorageWriter:
        return _PublishingWriter(self, key)

    async def remove(self) -> None:
        await asyncio.to_thread(self._store._remove_files, self._state.id)


LocalHold = _LocalHold  # for the engine's small completion


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


class HoldPublisher(Generic[H]):
    """A complete upload as a :class:`StorageWriter` whose bytes are already in its hold."""

    holds_parts = False
    holds_upload = False

    def __init__(self, hold: H, key: str) -> None:
        self._hold = hold
        self.key = key
        self.journal: bytes | None = None  # published durably by commit itself

    @property
    def size(self) -> int:
        return self._hold.received

    async def write(self, chunk: bytes) -> None:
        raise RuntimeError("a partial upload's bytes arrive through its hold, not its writer")


class _PublishingWriter(HoldPublisher["_LocalHold"]):
    """Commit links the data file into ``uploads/``: a link, so a crash before the row
    leaves it resumable (docs/design/intents.md)."""

    async def commit(self) -> None:
        store = self._hold._store
        source = store.data_path(self._hold.state.id)
        target = store.publish_dir / self.key
        fd = self._hold._fd

        def run() -> None:
            if store.fsync:
                os.fsync(fd)
            os.link(source, target)
            crash_point("tus.linked")
            if store.fsync:
                try:
                    fsync_dir(target.parent)
                except OSError:
                    target.unlink()
                    raise

        await asyncio.to_thread(run)
        self._hold.published = True

    async def abort(self) -> None:
        # The data file is the hold's to remove; a link is removed by the publish that made it.
        return
