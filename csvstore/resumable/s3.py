"""Resumable (tus) uploads on S3, nothing on the instance's disk: a record per upload
under ``tus/``, one multipart upload completed into the stored file, a lease for one writer
at a time across instances. See docs/design/resumable.md."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

from csvstore.crashpoints import crash_point
from csvstore.errors import UploadLocked
from csvstore.resumable.local import UPLOAD_ID, PartialState
from csvstore.resumable.s3_hold import S3Hold
from csvstore.resumable.s3_record import (
    RECORD_SUFFIX,
    S3_MIN_PART,
    TAIL_MARK,
    LostRace,
    S3Record,
    S3Records,
    locked,
)
from csvstore.storage.s3 import MAX_PARTS, STORED_NAME, TUS_FOLDER

log = logging.getLogger("csvstore.tus")

JUST_READ_SECONDS = 2.0
JUST_READ_KEPT = 1024


def tus_part_size(part_size: int, max_upload_size: int) -> int:
    """Every part's but the last: >= ``part_size``, 10,000 parts enough, n x 5 MiB."""
    wanted = max(part_size, -(-max_upload_size // MAX_PARTS), S3_MIN_PART)
    return -(-wanted // S3_MIN_PART) * S3_MIN_PART


class S3PartialStore(S3Records):
    """Partial uploads in the bucket of an :class:`S3Storage`."""

    async def create(self, state: PartialState) -> None:
        """The record, the multipart upload, the record naming it: a multipart upload without
        a record is a single-shot upload's, never ours to abort."""
        _, key = self.target(state.id)
        client, bucket = self.storage.client, self.storage.bucket
        record = S3Record(state=state, upload="", part_size=self.part_size)
        etag = await self._put(record, if_match=None)
        try:
            created = await client.create_multipart_upload(
                Bucket=bucket, Key=self.storage.object_key(key), ContentType="text/csv"
            )
            crash_point("tus.s3_upload_started")
            # A retried creation may have started another one, which nothing would name.
            retried = created["ResponseMetadata"].get("RetryAttempts", 0) > 0
            record = replace(record, upload=created["UploadId"], leftovers=retried)
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
        if loaded is None:
            return None
        if len(self.just_read) >= JUST_READ_KEPT:
            self.just_read.clear()
        self.just_read[upload_id] = (*loaded, time.monotonic())
        return loaded[0].state

    async def _acquire(
        self, upload_id: str, *, unless_completed: bool = False, lease: bool = True
    ) -> tuple[S3Record, str, str] | None:
        """(record, ETag, token) with this caller's lease written in (``lease``; else only
        checked: none live); None: no record."""
        seen = self.just_read.pop(upload_id, None)
        if seen is not None and time.monotonic() - seen[2] < JUST_READ_SECONDS:
            record, etag, _ = seen
            if not record.leased(time.time()) and not (unless_completed and record.state.completed):
                if not lease:
                    return record, etag, uuid.uuid4().hex[:16]
                with contextlib.suppress(LostRace):  # changed since: read afresh below
                    return await self._lease(record, etag)
        return await self._acquire_fresh(upload_id, unless_completed=unless_completed, lease=lease)

    async def _acquire_fresh(
        self, upload_id: str, *, unless_completed: bool = False, lease: bool = True
    ) -> tuple[S3Record, str, str] | None:
        try:
            loaded = await self._load(upload_id)
        except ValueError:
            return None
        if loaded is None or (unless_completed and loaded[0].state.completed):
            return None
        record, etag = loaded
        now = time.time()
        if record.leased(now):
            raise locked(upload_id, retry_after=record.lease_until - now)
        if not lease:
            return record, etag, uuid.uuid4().hex[:16]
        try:
            return await self._lease(record, etag)
        except LostRace:
            raise locked(upload_id) from None

    async def _lease(self, record: S3Record, etag: str) -> tuple[S3Record, str, str]:
        """Write this caller's lease into the record read with ``etag`` (or LostRace)."""
        token = uuid.uuid4().hex[:16]
        record = replace(record, owner=token, lease_until=time.time() + self.lease_seconds)
        etag = await self._put(record, if_match=etag)
        return record, etag, token

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[S3Hold | None]:
        if not UPLOAD_ID.match(upload_id):
            yield None
            return
        # The lease is taken by the hold's first record write or part: a PATCH that only adds
        # a segment writes the record once, conditional on the ETag read here.
        acquired = await self._acquire(upload_id, unless_completed=True, lease=False)
        if acquired is None:
            yield None
            return
        record, etag, token = acquired
        hold = S3Hold(self, record, etag, token, leased=False)
        try:
            unsettled = record.state.file_id is not None or record.object_done
            if unsettled:
                await hold.take_lease()
            if unsettled and not await self._settle(hold):
                yield None
                return
            hold.start_renewing()
            yield hold
        finally:
            await hold.release()

    async def _settle(self, hold: S3Hold) -> bool:
        """A completion cut short: whether the upload goes on (resumable, or to publish)."""
        record = hold.record
        state = record.state
        file_id = state.file_id
        if await self._published(state.id):
            done = replace(
                state, offset=state.length, completed=True, file_id=self.target(state.id)[0]
            )
            await hold.finish(replace(done, expires_at=time.time() + self.expiry))
            return False
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

    async def _records(self) -> dict[str, float]:
        """Upload id -> the record's last-modified time, for every record in the folder; tail
        segments of no record are removed on the way (see ``_drop_orphans``)."""
        found: dict[str, float] = {}
        tails: dict[str, list[str]] = {}
        paginator = self.storage.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.storage.bucket, Prefix=self.folder):
            for entry in page.get("Contents", []):
                name = entry["Key"].removeprefix(self.folder)
                stem, _, suffix = name.partition(".")
                if UPLOAD_ID.match(stem) and "." + suffix == RECORD_SUFFIX:
                    found[stem] = entry["LastModified"].timestamp()
                elif UPLOAD_ID.match(stem) and name.startswith(stem + TAIL_MARK):
                    tails.setdefault(stem, []).append(name)
        await self._drop_orphans({k: v for k, v in tails.items() if k not in found})
        return found

    async def _drop_orphans(self, tails: dict[str, list[str]]) -> None:
        """Segments a PATCH wrote after a removal had listed them (it holds no lease), and
        could not delete: a record is written before any segment and never comes back, so
        one absent now (checked after the segment was seen) is gone for good."""
        for upload_id, names in sorted(tails.items()):
            if await self._exists(self.record_key(upload_id)):
                continue
            log.warning("upload %s: removing %d orphan tail segment(s)", upload_id, len(names))
            with contextlib.suppress(Exception):  # tried again by the next sweep
                await self.storage.delete([TUS_FOLDER + name for name in names])

    async def sweep_expired(self, now: float) -> int:
        removed = 0
        records = await self._records()
        for upload_id in sorted(records):
            try:
                loaded = await self._load(upload_id)
            except ValueError:
                continue  # the start-up check's business
            if loaded is None or loaded[0].leased(now):
                continue
            if loaded[0].state.expires_at > now:
                if loaded[0].leftovers and loaded[0].state.completed:
                    await self._tidy(upload_id)
                continue
            try:
                acquired = await self._acquire(upload_id)
            except UploadLocked:
                continue  # in use: not abandoned after all
            if acquired is not None and acquired[0].state.expires_at <= now:
                await self._remove_all(acquired[0])
                removed += not acquired[0].state.completed
            elif acquired is not None:
                await S3Hold(self, *acquired).release()
        return removed

    async def _tidy(self, upload_id: str) -> None:
        try:
            acquired = await self._acquire(upload_id)
        except UploadLocked:
            return  # in use: its request finishes it
        if acquired is not None:
            hold = S3Hold(self, *acquired)
            try:
                await hold.tidy()
            finally:
                await hold.release()

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
        hold = S3Hold(self, *acquired)
        record = acquired[0]
        state = record.state
        try:
            if state.completed and state.expires_at > now:
                if record.leftovers:
                    await hold.tidy()
                return 0
            if self.target(upload_id)[0] in published:
                # Published, then the process died before it could record so.
                await hold.finish(replace(state, offset=state.length, completed=True))
                return 0
            if state.expires_at <= now:
                await hold.remove()
                return 1
            if record.object_done:
                # Made, no row: the next request publishes it (``owns`` spares it meanwhile).
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
