"""Partial uploads of the tus protocol on S3: nothing of them on the instance's disk.

Each tus upload is, under the storage prefix:

* ``tus/<upload id>.json``, its record: the :class:`PartialState`, the S3 multipart upload
  that receives its bytes, the parts acknowledged so far (number, ETag, size), the tail
  object and the lease (below). Replaced whole by conditional PUTs (``If-Match`` its last
  ETag, ``If-None-Match: *`` at creation), so two writers never both succeed.
* one multipart upload, started at creation under the key the complete file will have
  (``<file id>.csv``, the file id being the upload id as a UUID). Its parts are exactly
  :attr:`S3PartialStore.part_size` bytes -- a multiple of S3's 5 MiB minimum -- except the
  last, sent at completion; completing it publishes the file with no copy.
* ``tus/<upload id>.tail.<start>-<end>.<writer>``, the tail segments: the acknowledged
  bytes after the last whole part (fewer than one part), in order. A 204 acknowledges bytes
  only once they are in S3: the whole parts as parts, the rest in tail segments written
  before the record that names them. A checkpoint adds one segment with only its new bytes
  (append-only: a client sending small PATCHes does not rewrite the tail each time); when
  a part was cut meanwhile, or the segments grow too many, it writes the rest as a single
  segment instead and deletes the old ones after the record. Every segment has a new name
  (the writer's lease token is in it), so a writer that lost its lease never overwrites a
  segment the record names; strays are removed with the upload.

The record is the truth: parts and tails it does not name are never read. A crash at any
moment leaves the upload at its last acknowledged offset (or, while completing, published
or removed by the start-up check).

One writer at a time, across instances: a request that changes an upload first writes a
lease (its token, good for :data:`LEASE_SECONDS`) into the record with ``If-Match``, renews
it while it works, and clears it when done. Finding a live lease, or losing the race for
it, is :class:`UploadLocked` (423). A process that dies holding a lease blocks its upload
until the lease runs out. Every later write of the record is conditional on the ETag the
holder wrote, so a holder whose lease was taken over fails (423) instead of writing; the
parts it may still send are never named by the record (its ETags are), and completion
names parts by ETag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import orjson
from botocore.exceptions import ClientError

from csvstore.analysis.stream import FileFacts, UploadAnalysis
from csvstore.crashpoints import crash_point
from csvstore.errors import UploadLocked
from csvstore.resumable.local import UPLOAD_ID, HoldPublisher, PartialState
from csvstore.storage.s3 import (
    _PART_CHECKSUMS,
    MAX_PARTS,
    STORED_NAME,
    TUS_FOLDER,
    S3Storage,
    _error_code,
    _is_not_found,
    tus_file_id,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger("csvstore.tus")

S3_MIN_PART = 5 * 1024 * 1024
# A lease outlives its holder by this much (the tus_lease setting's default): a process
# killed mid-request blocks its upload (423) for at most this long. Renewed every third of
# it while the request runs.
LEASE_SECONDS = 30.0
_RECORD_SUFFIX = ".json"
_TAIL_MARK = ".tail."
# Tail segments a record may name before a checkpoint folds them into one: each is a GET
# when the upload is taken up again, and the record grows by one entry per segment.
MAX_SEGMENTS = 16


def tus_part_size(part_size: int, max_upload_size: int) -> int:
    """The size of every part but the last: at least ``part_size``, enough for the largest
    upload in 10,000 parts, and a multiple of S3's 5 MiB minimum."""
    wanted = max(part_size, -(-max_upload_size // MAX_PARTS), S3_MIN_PART)
    return -(-wanted // S3_MIN_PART) * S3_MIN_PART


class _Lost(Exception):
    """A conditional write found the record changed: someone else holds the upload."""


@dataclass(frozen=True, slots=True)
class _Record:
    state: PartialState
    upload: str  # the multipart upload's UploadId
    part_size: int
    # Acknowledged parts, in order (part n at index n-1): ETag, size, checksums.
    parts: list[dict[str, Any]] = field(default_factory=list)
    # Tail segments, in order: name (after the folder) and size.
    tail: list[dict[str, Any]] = field(default_factory=list)
    owner: str | None = None  # the lease holder's token
    lease_until: float = 0.0
    object_done: bool = False  # the multipart upload was completed into the final object

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> _Record:
        data = orjson.loads(raw)
        data["state"] = PartialState(**data["state"])
        record = cls(**data)
        parts_total = sum(int(p["Size"]) for p in record.parts)
        state = record.state
        if not (
            UPLOAD_ID.match(state.id)
            and 0 <= state.offset <= state.length
            and (state.completed or parts_total + record.tail_size == state.offset)
        ):
            raise ValueError(f"inconsistent tus record: {state}")
        return record

    def leased(self, now: float) -> bool:
        return self.owner is not None and self.lease_until > now

    @property
    def tail_size(self) -> int:
        return sum(int(segment["Size"]) for segment in self.tail)


class S3PartialStore:
    """Partial uploads in the bucket of an :class:`S3Storage`; see the module docstring."""

    def __init__(
        self,
        storage: S3Storage,
        *,
        part_size: int,
        expiry: float,
        lease_seconds: float = LEASE_SECONDS,
        is_published: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """``expiry``: the tus expiry, of completed uploads' records too."""
        if part_size % S3_MIN_PART:
            raise ValueError(f"tus part size {part_size} is not a multiple of 5 MiB")
        self.storage = storage
        self.part_size = part_size
        self.expiry = expiry
        self.lease_seconds = lease_seconds
        # Whether a file id has its row: settles a completion that died half-way.
        self.is_published = is_published

    # Names

    @property
    def folder(self) -> str:
        return self.storage.prefix + TUS_FOLDER

    def record_key(self, upload_id: str) -> str:
        return f"{self.folder}{upload_id}{_RECORD_SUFFIX}"

    def tail_key(self, name: str) -> str:
        return self.folder + name

    @staticmethod
    def target(upload_id: str) -> tuple[str, str]:
        file_id = tus_file_id(upload_id)
        return file_id, f"{file_id}.csv"

    # The record

    async def _load(self, upload_id: str) -> tuple[_Record, str] | None:
        """The record and its ETag; None if there is none. ValueError if unreadable."""
        client = self.storage.client
        try:
            response = await client.get_object(
                Bucket=self.storage.bucket, Key=self.record_key(upload_id)
            )
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise
        async with response["Body"] as body:
            raw = await body.read()
        try:
            return _Record.from_json(raw), response["ETag"]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"unreadable tus record {upload_id}: {exc}") from exc

    async def _put(self, record: _Record, *, if_match: str | None) -> str:
        """Write the record if it is still at ``if_match`` (None: only if there is none)."""
        extra: dict[str, str] = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        try:
            written = await self.storage.client.put_object(
                Bucket=self.storage.bucket,
                Key=self.record_key(record.state.id),
                Body=record.to_json(),
                ContentType="application/json",
                **extra,  # type: ignore[arg-type]
            )
        except ClientError as exc:
            if _error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                raise _Lost() from exc
            if if_match and _is_not_found(exc):
                raise _Lost() from exc  # removed meanwhile
            raise
        return written["ETag"]

    async def _delete_record(self, upload_id: str) -> None:
        await self.storage.client.delete_object(
            Bucket=self.storage.bucket, Key=self.record_key(upload_id)
        )

    # The protocol

    async def create(self, state: PartialState) -> None:
        """The record first, naming no multipart upload yet; then the multipart upload; then
        the record naming it. So every tus multipart upload has a record from its start: a
        multipart upload of a stored name without one is a single-shot upload's (perhaps
        streaming still), never ours to abort. A crash in between leaves a record without
        an upload id, whose removal aborts whatever was started under its key."""
        _, key = self.target(state.id)
        client, bucket = self.storage.client, self.storage.bucket
        record = _Record(state=state, upload="", part_size=self.part_size)
        etag = await self._put(record, if_match=None)
        try:
            created = await client.create_multipart_upload(
                Bucket=bucket, Key=self.storage.object_key(key), ContentType="text/csv"
            )
            crash_point("tus.s3_upload_started")
            record = replace(record, upload=created["UploadId"])
            await self._put(record, if_match=etag)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._remove_all(record)
            raise

    async def get(self, upload_id: str) -> PartialState | None:
        if not UPLOAD_ID.match(upload_id):
            return None
        try:
            loaded = await self._load(upload_id)
        except ValueError:
            log.warning("partial upload %s has an unreadable record", upload_id)
            return None
        return loaded[0].state if loaded is not None else None

    async def _acquire(
        self, upload_id: str, *, unless_completed: bool = False
    ) -> tuple[_Record, str, str] | None:
        """(record, ETag, token) with this caller's lease written in; None if there is no
        record (or it is unreadable, or ``unless_completed`` and it is completed)."""
        try:
            loaded = await self._load(upload_id)
        except ValueError:
            return None
        if loaded is None or (unless_completed and loaded[0].state.completed):
            return None
        record, etag = loaded
        now = time.time()
        if record.leased(now):
            raise _locked(upload_id, retry_after=record.lease_until - now)
        token = uuid.uuid4().hex[:16]
        record = replace(record, owner=token, lease_until=now + self.lease_seconds)
        try:
            etag = await self._put(record, if_match=etag)
        except _Lost:
            raise _locked(upload_id) from None
        return record, etag, token

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[_S3Hold | None]:
        if not UPLOAD_ID.match(upload_id):
            yield None
            return
        acquired = await self._acquire(upload_id, unless_completed=True)
        if acquired is None:
            yield None
            return
        record, etag, token = acquired
        hold = _S3Hold(self, record, etag, token)
        try:
            unsettled = record.state.file_id is not None or record.object_done
            if unsettled and not await self._settle(hold):
                yield None
                return
            if not hold.has_all_bytes:
                await hold.load_tail()
            hold.start_renewing()
            yield hold
        finally:
            await hold.release()

    async def _settle(self, hold: _S3Hold) -> bool:
        """A completion that did not finish (the process died, or lost its lease): whether
        the upload goes on -- resumable, or with all its bytes in the stored object and only
        the publish to do -- or not (published after all, or lost: None from ``hold``)."""
        record = hold.record
        state = record.state
        file_id = state.file_id
        if await self._published(state.id):
            done = replace(
                state, offset=state.length, completed=True, file_id=self.target(state.id)[0]
            )
            await hold.finish(replace(done, expires_at=time.time() + self.expiry))
            return False  # complete: the request gets the answer for a complete upload
        made = record.object_done
        if not made and file_id is not None and not await self._upload_exists(record):
            # The multipart upload was completed, and the process died before recording so.
            made = await self._exists(self.storage.object_key(self.target(state.id)[1]))
            if not made:
                log.warning("partial upload %s lost its multipart upload; removed", state.id)
                await hold.remove()
                return False
        if made:
            if file_id is not None and self.is_published is None:
                return False  # a row may exist: the start-up check settles it (423 until)
            await hold.take_object(replace(state, file_id=None))
            return True
        await hold.save(replace(state, file_id=None))  # the parts are all there: resumable
        return True

    async def _published(self, upload_id: str) -> bool:
        """Whether the upload's file has its row (False when that cannot be asked)."""
        if self.is_published is None:
            return False
        return await self.is_published(self.target(upload_id)[0])

    async def owns(self, key: str) -> bool:
        if not STORED_NAME.match(key):
            return False
        upload_id = uuid.UUID(key.removesuffix(".csv")).hex
        return await self._exists(self.record_key(upload_id))

    async def remove(self, upload_id: str) -> bool:
        if not UPLOAD_ID.match(upload_id):
            return False
        acquired = await self._acquire(upload_id)
        if acquired is None:
            return False
        record, _, _ = acquired
        await self._remove_all(record)
        return True

    async def _abort_upload(self, record: _Record) -> None:
        if not record.object_done:
            await self._abort_uploads(record.state.id, record.upload)

    async def _abort_uploads(self, upload_id: str, known: str = "") -> None:
        """Abort the upload's multipart upload; without its id (a creation cut short, an
        unreadable record), every one started under its key, which is this upload's alone."""
        client, bucket = self.storage.client, self.storage.bucket
        object_key = self.storage.object_key(self.target(upload_id)[1])
        upload_ids = [known]
        if not known:
            paginator = client.get_paginator("list_multipart_uploads")
            upload_ids = [
                upload["UploadId"]
                async for page in paginator.paginate(Bucket=bucket, Prefix=object_key)
                for upload in page.get("Uploads", [])
                if upload["Key"] == object_key
            ]
        for each in upload_ids:
            try:
                await client.abort_multipart_upload(Bucket=bucket, Key=object_key, UploadId=each)
            except ClientError as exc:
                if _error_code(exc) != "NoSuchUpload":
                    raise

    async def _delete_tails(self, upload_id: str) -> None:
        """Every tail segment of the upload (strays of crashed writers too)."""
        prefix = f"{self.folder}{upload_id}{_TAIL_MARK}"
        paginator = self.storage.client.get_paginator("list_objects_v2")
        names: list[str] = []
        async for page in paginator.paginate(Bucket=self.storage.bucket, Prefix=prefix):
            names += [e["Key"].removeprefix(self.folder) for e in page.get("Contents", [])]
        doomed = [TUS_FOLDER + name for name in names]
        if doomed:
            await self.storage.delete(doomed)

    async def _remove_all(self, record: _Record) -> None:
        """The multipart upload (or the object it became, if no row has it) first, the
        record last: a failure on the way leaves a record, and so a later removal (sweeper,
        start-up check) that finishes the job."""
        await self._abort_upload(record)
        state = record.state
        # A completion cut short: the object is this upload's alone unless a row has it
        # (when that cannot be asked, the check removes it once it is an orphan).
        cut_short = record.object_done and not state.completed
        if cut_short and self.is_published is not None and not await self._published(state.id):
            await self.storage.delete([self.target(state.id)[1]])
        await self._delete_tails(record.state.id)
        await self._delete_record(record.state.id)

    # Sweeping and reconciling

    async def _records(self) -> dict[str, float]:
        """Upload id -> the record's last-modified time, for every record in the folder."""
        found: dict[str, float] = {}
        paginator = self.storage.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.storage.bucket, Prefix=self.folder):
            for entry in page.get("Contents", []):
                name = entry["Key"].removeprefix(self.folder)
                stem, _, suffix = name.partition(".")
                if UPLOAD_ID.match(stem) and "." + suffix == _RECORD_SUFFIX:
                    found[stem] = entry["LastModified"].timestamp()
        return found

    async def sweep_expired(self, now: float) -> int:
        removed = 0
        records = await self._records()
        for upload_id in sorted(records):
            try:
                loaded = await self._load(upload_id)
            except ValueError:
                continue  # the start-up check's business
            if loaded is None or loaded[0].state.expires_at > now or loaded[0].leased(now):
                continue
            try:
                acquired = await self._acquire(upload_id)
            except UploadLocked:
                continue  # in use: not abandoned after all
            if acquired is not None and acquired[0].state.expires_at <= now:
                await self._remove_all(acquired[0])
                removed += 1
            elif acquired is not None:
                await _S3Hold(self, *acquired).release()
        return removed

    async def remove_for_sessions(self, session_ids: set[str]) -> int:
        removed = 0
        for upload_id in sorted(await self._records()):
            try:
                loaded = await self._load(upload_id)
            except ValueError:
                continue  # the start-up check's business
            if loaded is None or loaded[0].state.session_id not in session_ids:
                continue
            try:
                acquired = await self._acquire(upload_id)
            except UploadLocked:
                continue  # its request finds the session gone
            if acquired is not None:
                await self._remove_all(acquired[0])
                removed += 1
        return removed

    async def reconcile(self, *, published: set[str], min_age: float = 0.0) -> int:
        removed = 0
        now = time.time()
        for upload_id, modified in sorted((await self._records()).items()):
            if now - modified < min_age:
                continue
            try:
                removed += await self._reconcile_one(upload_id, published, now)
            except UploadLocked:
                continue  # a running server is writing it: it is not broken
        return removed

    async def _reconcile_one(self, upload_id: str, published: set[str], now: float) -> int:
        """1 if the upload was removed, else 0."""
        try:
            acquired = await self._acquire(upload_id)
        except ValueError:
            acquired = None
        if acquired is None:
            try:
                if await self._load(upload_id) is None:
                    return 0
            except ValueError:  # unreadable: nothing to resume
                await self._abort_uploads(upload_id)
                await self._delete_tails(upload_id)
                await self._delete_record(upload_id)
                return 1
            return 0
        hold = _S3Hold(self, *acquired)
        record = acquired[0]
        state = record.state
        try:
            if state.completed and state.expires_at > now:
                return 0
            if self.target(upload_id)[0] in published:
                # Published, then the process died before it could record so.
                await hold.finish(replace(state, offset=state.length, completed=True))
                return 0
            if state.expires_at <= now:
                await hold.remove()
                return 1
            if record.object_done:
                # The object was made, but no row: a completion died before its commit. The
                # upload's next request publishes it (``owns`` spares the object meanwhile).
                return 0
            if not all([await self._exists(self.tail_key(t["Name"])) for t in record.tail]):
                log.warning("partial upload %s lost acknowledged bytes; removed", upload_id)
                await hold.remove()
                return 1
            if not await self._upload_exists(record):
                log.warning("partial upload %s lost its multipart upload; removed", upload_id)
                await hold.remove()
                return 1
            return 0
        finally:
            await hold.release()

    async def _exists(self, key: str) -> bool:
        try:
            await self.storage.client.head_object(Bucket=self.storage.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    async def _upload_exists(self, record: _Record) -> bool:
        if not record.upload:
            return False  # its creation was cut short
        _, key = self.target(record.state.id)
        try:
            await self.storage.client.list_parts(
                Bucket=self.storage.bucket,
                Key=self.storage.object_key(key),
                UploadId=record.upload,
                MaxParts=1,
            )
        except ClientError as exc:
            if _error_code(exc) in {"NoSuchUpload", "404"}:
                return False
            raise
        return True


def _locked(upload_id: str, *, retry_after: float | None = None) -> UploadLocked:
    return UploadLocked(
        f"upload {upload_id} is being written by another request; retry shortly",
        retry_after=retry_after,
    )


class _S3Hold:
    """One upload held under a lease: bytes arrive in ``_buffer`` (the acknowledged tail,
    then the new bytes); each whole part is sent as soon as it fills."""

    def __init__(self, store: S3PartialStore, record: _Record, etag: str, token: str) -> None:
        self._store = store
        self._record = record
        self._etag = etag
        self._token = token
        self._buffer = bytearray()
        self._new_parts: list[dict[str, Any]] = []  # sent since the last checkpoint
        self._pending = 0
        self._write_lock = asyncio.Lock()
        self._renewing: asyncio.Task[None] | None = None
        self._lost = False
        self._released = False
        self._all_bytes = False  # the stored object has them all: only the publish is left

    @property
    def state(self) -> PartialState:
        return self._record.state

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def record(self) -> _Record:
        return self._record

    @property
    def has_all_bytes(self) -> bool:
        return self._all_bytes

    @property
    def interrupted_publish(self) -> None:
        return None  # an interrupted completion here is an object with every byte (above)

    async def abandon_publish(self) -> None:
        raise RuntimeError("S3 holds have no interrupted publish to abandon")

    async def take_object(self, state: PartialState) -> None:
        """Go on from the stored object, which has every byte (see ``_settle``)."""
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

    # The lease

    def start_renewing(self) -> None:
        self._renewing = asyncio.create_task(self._renew_forever(), name="tus-lease")

    async def _renew_forever(self) -> None:
        while not self._lost:
            await asyncio.sleep(self._store.lease_seconds / 3)
            try:
                await self._write(self._record)
            except UploadLocked:
                log.warning("upload %s: lease lost to another writer", self.state.id)
                return
            except Exception as exc:  # S3 briefly unreachable: try again next round
                log.warning("upload %s: could not renew the lease: %r", self.state.id, exc)

    async def _write(self, record: _Record, *, release: bool = False) -> None:
        """Write the record with the lease renewed (or cleared), if nobody else wrote it."""
        async with self._write_lock:
            if self._lost:
                raise _locked(self.state.id)
            if release:
                record = replace(record, owner=None, lease_until=0.0)
            else:
                until = time.time() + self._store.lease_seconds
                record = replace(record, owner=self._token, lease_until=until)
            try:
                self._etag = await self._store._put(record, if_match=self._etag)
            except _Lost:
                self._lost = True
                raise _locked(self.state.id) from None
            self._record = record

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._stop_renewing()
        if self._lost:
            return
        try:
            await asyncio.shield(self._write(self._record, release=True))
        except UploadLocked:
            pass  # removed or taken over meanwhile
        except Exception as exc:  # it runs out by itself
            log.warning("upload %s: could not release its lease: %r", self.state.id, exc)

    # Bytes

    async def load_tail(self) -> None:
        self._buffer = bytearray(await self._read_tail())

    async def _read_tail(self) -> bytes:
        tail = bytearray()
        for segment in self._record.tail:
            response = await self._store.storage.client.get_object(
                Bucket=self._store.storage.bucket, Key=self._store.tail_key(segment["Name"])
            )
            async with response["Body"] as body:
                data = await body.read()
            if len(data) != segment["Size"]:
                raise OSError(
                    f"tail segment {segment['Name']} has {len(data)} bytes, not {segment['Size']}"
                )
            tail += data
        return bytes(tail)

    async def append(self, chunk: bytes) -> None:
        if self._lost:
            raise _locked(self.state.id)
        self._buffer += chunk
        self._pending += len(chunk)
        size = self._record.part_size
        while len(self._buffer) >= size:
            await self._send_part(bytes(self._buffer[:size]))
            del self._buffer[:size]

    async def _send_part(self, body: bytes) -> None:
        if self._lost or time.time() > self._record.lease_until - self._store.lease_seconds / 6:
            # Not renewed in time (S3 unreachable, the process paused): another writer may
            # hold the upload by now, and a part must never overwrite one of theirs.
            raise _locked(self.state.id)
        number = len(self._record.parts) + len(self._new_parts) + 1
        if number > MAX_PARTS:
            raise ValueError(f"upload {self.state.id} needs more than {MAX_PARTS} parts")
        _, key = self.target
        sent = await self._store.storage.client.upload_part(
            Bucket=self._store.storage.bucket,
            Key=self._store.storage.object_key(key),
            UploadId=self._record.upload,
            PartNumber=number,
            Body=body,
        )
        part: dict[str, Any] = {"ETag": sent["ETag"], "Size": len(body)}
        for name in _PART_CHECKSUMS:
            if sent.get(name):
                part[name] = sent.get(name)
        self._new_parts.append(part)

    async def checkpoint(self, *, expires_at: float) -> PartialState:
        """The new parts are in S3 already; the new bytes after them go into a tail
        segment, then the record that names parts and segments; then segments it no longer
        names go."""
        record = self._record
        tail, dropped = record.tail, []
        if self._pending:
            if self._new_parts or len(record.tail) >= MAX_SEGMENTS:
                # The old segments' bytes are in the new parts, or about to be folded.
                tail, dropped = [], record.tail
                fresh = bytes(self._buffer)
            else:  # the buffer is the old segments' bytes, then the pending ones
                fresh = bytes(self._buffer[len(self._buffer) - self._pending :])
            if fresh:
                tail = [*tail, await self._put_segment(fresh)]
        state = replace(record.state, offset=self.received, expires_at=expires_at)
        new = replace(record, state=state, parts=record.parts + self._new_parts, tail=tail)
        crash_point("tus.checkpoint_synced")  # on S3: parts and segment stored, not yet named
        await self._write(new)
        self._new_parts = []
        self._pending = 0
        if dropped:
            with contextlib.suppress(Exception):  # strays; removed with the upload
                await self._store.storage.delete([TUS_FOLDER + t["Name"] for t in dropped])
        return state

    async def _put_segment(self, data: bytes) -> dict[str, Any]:
        end = self.received
        name = f"{self.state.id}{_TAIL_MARK}{end - len(data)}-{end}.{self._token}"
        await self._store.storage.client.put_object(
            Bucket=self._store.storage.bucket, Key=self._store.tail_key(name), Body=data
        )
        return {"Name": name, "Size": len(data)}

    async def rollback(self) -> None:
        """Forget what was not acknowledged: parts sent meanwhile are never named."""
        self._pending = 0
        self._new_parts = []
        self._buffer = bytearray(await self._read_tail())

    async def save(self, state: PartialState) -> None:
        await self._write(replace(self._record, state=state))

    # Completing

    def publisher(self, key: str) -> _S3Publisher:
        if key != self.target[1]:
            raise ValueError(f"upload {self.state.id} is published under {self.target[1]}")
        return _S3Publisher(self, key)

    async def complete_object(self) -> None:
        """Make the final object from the parts and the rest of the bytes (idempotent).
        With no whole part, a single PUT; the multipart upload is aborted."""
        if self._record.object_done:
            return
        if self._record.state.file_id is None:
            # The intent first: a process that dies between completing the multipart upload
            # and recording so leaves a record that says where to look (``_settle``).
            intent = replace(self._record.state, file_id=self.target[0])
            await self._write(replace(self._record, state=intent))
        record = self._record
        storage = self._store.storage
        _, key = self.target
        object_key = storage.object_key(key)
        parts = record.parts + self._new_parts
        if not parts:
            await storage.client.put_object(
                Bucket=storage.bucket,
                Key=object_key,
                Body=bytes(self._buffer),
                ContentType="text/csv",
            )
            with contextlib.suppress(Exception):  # no parts: an orphan costs nothing
                await self._store._abort_upload(record)
        else:
            if self._buffer:
                await self._send_part(bytes(self._buffer))
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
        await self._write(replace(self._record, object_done=True))

    async def analyse(
        self, *, enabled: bool, chunk_size: int, encoding: str | None = None
    ) -> FileFacts:
        """Complete the object, then read it back through the analysis (none was carried
        over: another instance or process received earlier bytes)."""
        await self.complete_object()
        analysis = UploadAnalysis(enabled=enabled, encoding=encoding)
        async for chunk in self._store.storage.read(self.target[1]):
            # In a thread, as the local store's re-read: the profile is seconds of CPU per
            # GiB, which the event loop's other requests should not wait behind.
            await asyncio.to_thread(analysis.feed, chunk)
        return analysis.finish()

    async def finish(self, state: PartialState) -> None:
        """Published (or a duplicate): only the record stays, until it expires."""
        record = self._record
        if not record.object_done:  # a duplicate: the parts are not wanted
            await self._store._abort_upload(record)
        # The segments before the record that no longer names them: a crash in between
        # leaves a completion that the next request settles (``_settle``), and none leaves
        # segments beside a completed record.
        with contextlib.suppress(Exception):  # what is left goes with the record
            await self._store._delete_tails(state.id)
        crash_point("tus.s3_tails_dropped")
        await self._write(replace(record, state=state, parts=[], tail=[], object_done=True))

    async def remove(self) -> None:
        """Remove the upload -- if it is still this request's: a holder that lost its lease
        must not remove what another request now holds."""
        await self._stop_renewing()
        try:
            await self._write(self._record)
        except UploadLocked:
            log.warning("upload %s: not removed, another request holds it", self.state.id)
            return
        await self._store._remove_all(self._record)
        self._released = True  # nothing left to release (or, on failure, it lapses)

    def forget(self) -> None:
        """The upload is gone: there is no lease left to renew or release."""
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


class _S3Publisher(HoldPublisher["_S3Hold"]):
    """Commit completes the multipart upload into the final object (if the analysis did
    not already), abort deletes it."""

    async def commit(self) -> None:
        await self._hold.complete_object()

    async def abort(self) -> None:
        if self._hold._record.object_done and not self._hold._lost:
            await self._hold._store.storage.delete([self.key])
