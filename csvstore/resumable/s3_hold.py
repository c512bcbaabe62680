"""An S3 tus upload held under a lease: its bytes sent as parts and tail segments, its
completion into the stored object. See docs/design/resumable.md."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from csvstore.analysis.stream import FileFacts, UploadAnalysis
from csvstore.crashpoints import crash_point
from csvstore.errors import UploadLocked, UploadNotFound
from csvstore.resumable.local import HoldPublisher, PartialState
from csvstore.resumable.s3_record import (
    MAX_SEGMENTS,
    TAIL_MARK,
    LostRace,
    S3Record,
    S3Records,
    locked,
)
from csvstore.storage import s3 as s3_storage
from csvstore.storage.s3 import _PART_CHECKSUMS, MAX_PARTS, TUS_FOLDER, PartBody

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger("csvstore.tus")


class S3Hold:
    """One upload held under a lease, each whole part sent at once. ``_buffer`` holds the bytes
    after the parts once the tail segments are read (only to cut a part, or to complete), and
    until then only the bytes after the tail: most small PATCHes never read the tail."""

    holds_parts = True

    def __init__(
        self, store: S3Records, record: S3Record, etag: str, token: str, *, leased: bool = True
    ) -> None:
        self._store = store
        self._leased = leased  # else the first record write takes the lease
        self._record = record
        self._etag = etag
        self._token = token
        self._buffer = bytearray()
        self._tail_loaded = False
        self._new_parts: list[dict[str, Any]] = []  # sent since the last checkpoint
        self._pending = 0
        self._write_lock = asyncio.Lock()
        self._renewing: asyncio.Task[None] | None = None
        self._renew = False
        self._lost = False
        self._released = False
        self._all_bytes = False  # the stored object has them all: only the publish is left
        # One of the storage's part slots (the process-wide bound on buffered parts, shared
        # with multipart uploads), held from when the buffer passes UNRESERVED to release().
        self._slot = False
        self._waived = False  # no slot came within SLOT_WAIT: this request buffers without

    @property
    def state(self) -> PartialState:
        return self._record.state

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def record(self) -> S3Record:
        return self._record

    @property
    def has_all_bytes(self) -> bool:
        return self._all_bytes

    @property
    def interrupted_publish(self) -> None:
        return None

    async def abandon_publish(self) -> None:
        raise RuntimeError("S3 holds have no interrupted publish to abandon")

    async def take_object(self, state: PartialState) -> None:
        await self._write(replace(self._record, state=state, object_done=True))
        self._all_bytes = True

    @property
    def received(self) -> int:
        if self._all_bytes:
            return self._record.state.length
        return self._record.state.offset + self._pending

    @property
    def target(self) -> tuple[str, str]:
        return self._store.target(self.state.id)

    def start_renewing(self) -> None:
        self._renew = True
        if self._leased and self._renewing is None:
            self._renewing = asyncio.create_task(self._renew_forever(), name="tus-lease")

    async def take_lease(self) -> None:
        if not self._leased:
            await self._write(self._record)

    async def _renew_forever(self) -> None:
        while not self._lost:
            await asyncio.sleep(self._store.lease_seconds / 3)
            try:
                await self._write(self._record)
            except (UploadLocked, UploadNotFound):
                log.warning("upload %s: lease lost to another writer", self.state.id)
                return
            except Exception as exc:  # S3 briefly unreachable: try again next round
                log.warning("upload %s: could not renew the lease: %r", self.state.id, exc)

    async def _write(self, record: S3Record, *, release: bool = False) -> None:
        """Write the record with the lease renewed (or cleared), if nobody else wrote it."""
        async with self._write_lock:
            if self._lost:
                raise locked(self.state.id)
            if release:
                record = replace(record, owner=None, lease_until=0.0)
            else:
                until = time.time() + self._store.lease_seconds
                record = replace(record, owner=self._token, lease_until=until)
            try:
                self._etag = await self._store._put(record, if_match=self._etag)
            except LostRace:
                self._lost = True
                if not await self._store._exists(self._store.record_key(self.state.id)):
                    raise UploadNotFound(
                        f"upload {self.state.id!r} not found: it was terminated or expired "
                        "while this request ran"
                    ) from None
                raise locked(self.state.id) from None
            self._record = record
            if not release and not self._leased:
                self._leased = True
                if self._renew:
                    self.start_renewing()

    async def release(self) -> None:
        if self._slot:
            self._slot = False
            self._store.storage.part_slots.release()
        if self._released:
            return
        self._released = True
        await self._stop_renewing()
        if self._lost or not self._leased:
            return
        try:
            await asyncio.shield(self._write(self._record, release=True))
        except (UploadLocked, UploadNotFound):
            pass  # removed or taken over meanwhile
        except Exception as exc:  # it runs out by itself
            log.warning("upload %s: could not release its lease: %r", self.state.id, exc)

    async def load_tail(self) -> None:
        if not self._tail_loaded:
            self._buffer[:0] = await self._read_tail()
            self._tail_loaded = True

    async def _read_tail(self) -> bytes:
        async def read(segment: dict[str, Any]) -> bytes:
            response = await self._store.storage.client.get_object(
                Bucket=self._store.storage.bucket, Key=self._store.tail_key(segment["Name"])
            )
            async with response["Body"] as body:
                data: bytes = await body.read()
            if len(data) != segment["Size"]:
                raise OSError(
                    f"tail segment {segment['Name']} has {len(data)} bytes, not {segment['Size']}"
                )
            return data

        # At once: a part cut after 1 MiB PATCHes reads up to nine (bench/RESULTS.md).
        return b"".join(await asyncio.gather(*(read(s) for s in self._record.tail)))

    async def append(self, chunk: bytes) -> None:
        if self._lost:
            raise locked(self.state.id)
        await self._reserve(len(chunk))
        self._pending += len(chunk)
        size = self._record.part_size
        if not self._tail_loaded:
            if self._record.tail_size + len(self._buffer) + len(chunk) < size:
                self._buffer += chunk
                return
            await self.load_tail()
        view = memoryview(chunk)
        # Filled to exactly a part and sent as it is: no copy of the part.
        while len(self._buffer) + len(view) >= size:
            room = size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            try:
                await self._send_part(self._buffer)
            except BaseException:
                self._buffer = self._buffer + view  # a new one: this one may still be exported
                raise
            self._buffer = bytearray()
        self._buffer += view

    async def _reserve(self, more: int) -> None:
        """A slot before the buffer (with the tail, once read) passes UNRESERVED bytes: past
        SLOT_WAIT the request goes on without one (a stalled client must not stall all)."""
        held = len(self._buffer) + (0 if self._tail_loaded else self._record.tail_size)
        if self._slot or self._waived or held + more <= s3_storage.UNRESERVED:
            return
        try:
            async with asyncio.timeout(s3_storage.SLOT_WAIT):
                await self._store.storage.part_slots.acquire()
            self._slot = True
        except TimeoutError:
            self._waived = True

    async def _send_part(self, body: bytes | bytearray) -> None:
        await self.take_lease()
        if self._lost or time.time() > self._record.lease_until - self._store.lease_seconds / 6:
            # Not renewed in time: a part must never overwrite another writer's.
            raise locked(self.state.id)
        number = len(self._record.parts) + len(self._new_parts) + 1
        if number > MAX_PARTS:
            raise ValueError(f"upload {self.state.id} needs more than {MAX_PARTS} parts")
        _, key = self.target
        sent = await self._store.storage.client.upload_part(
            Bucket=self._store.storage.bucket,
            Key=self._store.storage.object_key(key),
            UploadId=self._record.upload,
            PartNumber=number,
            Body=PartBody(body),
        )
        part: dict[str, Any] = {"ETag": sent["ETag"], "Size": len(body)}
        for name in _PART_CHECKSUMS:
            if sent.get(name):
                part[name] = sent.get(name)
        self._new_parts.append(part)

    async def checkpoint(self, *, expires_at: float, last: bool = False) -> PartialState:
        """New bytes into a tail segment, then the record naming parts and segments (``last``:
        with the lease released, one write instead of two)."""
        record = self._record
        tail, dropped, written = record.tail, [], None
        if self._pending:
            if len(record.tail) >= MAX_SEGMENTS:
                await self.load_tail()
            if self._new_parts or len(record.tail) >= MAX_SEGMENTS:
                tail, dropped = [], record.tail
                fresh = bytes(self._buffer)
            else:  # the buffer is the old segments' bytes, then the pending ones
                fresh = bytes(self._buffer[len(self._buffer) - self._pending :])
            if fresh:
                written = await self._put_segment(fresh)
                tail = [*tail, written]
        state = replace(record.state, offset=self.received, expires_at=expires_at)
        new = replace(record, state=state, parts=record.parts + self._new_parts, tail=tail)
        crash_point("tus.checkpoint_synced")
        if last:
            await self._stop_renewing()
        try:
            await self._write(new, release=last)
        except (UploadLocked, UploadNotFound):
            if written is not None:
                await self._drop_unnamed(written["Name"])
            raise
        self._released = last
        self._new_parts = []
        self._pending = 0
        if not self._tail_loaded:
            self._buffer = bytearray()  # in the new segment
        if dropped:
            with contextlib.suppress(Exception):  # strays; removed with the upload
                await self._store.storage.delete([TUS_FOLDER + t["Name"] for t in dropped])
        return state

    async def _drop_unnamed(self, name: str) -> None:
        """A segment whose record write lost the race: deleted unless the record names it (a
        write that succeeded, its answer lost and retried). Unleased, a removal may have
        listed the tails before it was written; one left by a crash here is an orphan the
        sweep removes."""
        try:
            loaded = await self._store._load(self.state.id)
            if loaded is None or all(t["Name"] != name for t in loaded[0].tail):
                await self._store.storage.delete([TUS_FOLDER + name])
        except Exception as exc:
            log.warning("upload %s: segment %s not removed: %r", self.state.id, name, exc)

    async def _put_segment(self, data: bytes) -> dict[str, Any]:
        end = self.received
        name = f"{self.state.id}{TAIL_MARK}{end - len(data)}-{end}.{self._token}"
        await self._store.storage.client.put_object(
            Bucket=self._store.storage.bucket, Key=self._store.tail_key(name), Body=PartBody(data)
        )
        return {"Name": name, "Size": len(data)}

    async def rollback(self) -> None:
        """Forget what was not acknowledged: parts sent meanwhile are never named."""
        self._pending = 0
        self._new_parts = []
        self._buffer = bytearray()
        self._tail_loaded = False

    async def save(self, state: PartialState) -> None:
        await self._write(replace(self._record, state=state))

    def publisher(self, key: str) -> S3Publisher:
        if key != self.target[1]:
            raise ValueError(f"upload {self.state.id} is published under {self.target[1]}")
        return S3Publisher(self, key)

    async def complete_object(self) -> None:
        """The final object from the parts and the rest (idempotent; no whole part: a PUT)."""
        if self._record.object_done:
            return
        if self._record.state.file_id is None:
            # The intent first: a death before the record says so knows where to look.
            intent = replace(self._record.state, file_id=self.target[0])
            await self._write(replace(self._record, state=intent))
        await self.load_tail()
        record = self._record
        storage = self._store.storage
        _, key = self.target
        left_open = False
        object_key = storage.object_key(key)
        parts = record.parts + self._new_parts
        if not parts:
            await storage.client.put_object(
                Bucket=storage.bucket,
                Key=object_key,
                Body=PartBody(self._buffer),
                ContentType="text/csv",
            )
            try:  # no parts: the multipart upload is not needed
                await self._store._abort_upload(record)
            except Exception:
                left_open = True  # the finish (or the sweep) lists and aborts it
        else:
            if self._buffer:
                await self._send_part(self._buffer)
                parts = record.parts + self._new_parts
            completed = [
                cast("CompletedPartTypeDef", {"PartNumber": n, **{k: v for k, v in p.items()
                                                                  if k != "Size"}})
                for n, p in enumerate(parts, start=1)
            ]  # fmt: skip
            await storage.client.complete_multipart_upload(
                Bucket=storage.bucket,
                Key=object_key,
                UploadId=record.upload,
                MultipartUpload={"Parts": completed},
            )
        crash_point("tus.s3_object_completed")
        self._buffer = bytearray()
        # Recorded, so that a removal deletes the object rather than aborting the upload.
        leftovers = self._record.leftovers or left_open
        await self._write(replace(self._record, object_done=True, leftovers=leftovers))

    async def analyse(
        self, *, enabled: bool, chunk_size: int, encoding: str | None = None
    ) -> FileFacts:
        """Complete the object, then read it back through the analysis."""
        await self.complete_object()
        analysis = UploadAnalysis(enabled=enabled, encoding=encoding)
        async for chunk in self._store.storage.read(self.target[1]):
            # In a thread: profiling is CPU-heavy (bench/RESULTS.md, issue 16).
            await asyncio.to_thread(analysis.feed, chunk)
        return analysis.finish()

    async def finish(self, state: PartialState) -> None:
        """Published (or a duplicate): only the record stays, until it expires."""
        record = self._record
        # Before the record: a crash between leaves a completion to settle.
        dropped = await self._store.drop_leftovers(record)
        crash_point("tus.s3_tails_dropped")
        done = replace(record, state=state, parts=[], tail=[], object_done=True)
        await self._write(replace(done, leftovers=not dropped))

    async def tidy(self) -> None:
        """The removal of a finished upload's leftovers, tried again."""
        if await self._store.drop_leftovers(self._record):
            await self._write(replace(self._record, leftovers=False))

    async def remove(self) -> None:
        """Remove the upload, if this request still holds its lease."""
        self._renew = False
        await self._stop_renewing()
        try:
            await self._write(self._record)
        except (UploadLocked, UploadNotFound):
            log.warning("upload %s: not removed, another request holds it", self.state.id)
            return
        await self._store._remove_all(self._record)
        self._released = True

    def forget(self) -> None:
        self._released = True
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            renewing.cancel()

    async def _stop_renewing(self) -> None:
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            renewing.cancel()
            with contextlib.suppress(BaseException):
                await renewing


class S3Publisher(HoldPublisher["S3Hold"]):
    """Commit completes the object (if the analysis did not), abort deletes it."""

    holds_upload = True

    async def commit(self) -> None:
        await self._hold.complete_object()

    async def abort(self) -> None:
        if self._hold._record.object_done and not self._hold._lost:
            await self._hold._store.storage.delete([self.key])
