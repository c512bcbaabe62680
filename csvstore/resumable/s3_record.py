"""The S3 tus store's record of an upload, and the bucket operations on it (the record,
the multipart upload, the tail segments). See docs/design/resumable.md."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from botocore.exceptions import ClientError

from csvstore.errors import UploadLocked
from csvstore.resumable.local import UPLOAD_ID, PartialState
from csvstore.storage.s3 import TUS_FOLDER, S3Storage, _error_code, _is_not_found, tus_file_id

log = logging.getLogger("csvstore.tus")

S3_MIN_PART = 5 * 1024 * 1024
# The tus_lease default: a killed process blocks its upload (423) this long.
LEASE_SECONDS = 30.0
RECORD_SUFFIX = ".json"
TAIL_MARK = ".tail."
# Before a checkpoint folds them into one: each is a GET when the upload is taken up again.
MAX_SEGMENTS = 16


class LostRace(Exception):
    """A conditional write found the record changed: someone else holds the upload."""


@dataclass(frozen=True, slots=True)
class S3Record:
    state: PartialState
    upload: str
    part_size: int
    # In order: acknowledged parts (ETag, Size, checksums), tail segments (Name, Size).
    parts: list[dict[str, Any]] = field(default_factory=list)
    tail: list[dict[str, Any]] = field(default_factory=list)
    owner: str | None = None
    lease_until: float = 0.0
    object_done: bool = False  # the multipart upload was completed into the final object
    # Something besides the object may be left under the upload's names (a multipart upload a
    # retried creation or a failed abort left open, tail segments): listed and removed.
    leftovers: bool = False

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> S3Record:
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


class S3Records:
    """Where an :class:`S3Storage` keeps tus uploads: names, records, aborts and removal."""

    def __init__(
        self,
        storage: S3Storage,
        *,
        part_size: int,
        expiry: float,
        lease_seconds: float = LEASE_SECONDS,
        is_published: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        if part_size % S3_MIN_PART:
            raise ValueError(f"tus part size {part_size} is not a multiple of 5 MiB")
        self.storage = storage
        self.part_size = part_size
        self.expiry = expiry
        self.lease_seconds = lease_seconds
        # Whether a file id has its row: settles a completion that died half-way.
        self.is_published = is_published
        # Records just read by get(), for the PATCH that reads them again to take the lease:
        # its conditional write fails on a stale one, which is then read afresh.
        self.just_read: dict[str, tuple[S3Record, str, float]] = {}

    @property
    def folder(self) -> str:
        return self.storage.prefix + TUS_FOLDER

    def record_key(self, upload_id: str) -> str:
        return f"{self.folder}{upload_id}{RECORD_SUFFIX}"

    def tail_key(self, name: str) -> str:
        return self.folder + name

    @staticmethod
    def target(upload_id: str) -> tuple[str, str]:
        file_id = tus_file_id(upload_id)
        return file_id, f"{file_id}.csv"

    async def _load(self, upload_id: str) -> tuple[S3Record, str] | None:
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
            return S3Record.from_json(raw), response["ETag"]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"unreadable tus record {upload_id}: {exc}") from exc

    async def _put(self, record: S3Record, *, if_match: str | None) -> str:
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
                raise LostRace() from exc
            if if_match and _is_not_found(exc):
                raise LostRace() from exc
            raise
        return written["ETag"]

    async def _delete_record(self, upload_id: str) -> None:
        await self.storage.client.delete_object(
            Bucket=self.storage.bucket, Key=self.record_key(upload_id)
        )

    async def _published(self, upload_id: str) -> bool:
        if self.is_published is None:
            return False
        return await self.is_published(self.target(upload_id)[0])

    async def _abort_upload(self, record: S3Record) -> None:
        if record.leftovers:
            await self._abort_uploads(record.state.id)
        elif not record.object_done:
            await self._abort_uploads(record.state.id, record.upload)

    async def drop_leftovers(self, record: S3Record) -> bool:
        """Everything of a finished upload but its object and record: its multipart uploads
        (a duplicate's, or left open), its tail segments. False: S3 refused (tried again by
        the sweep, the record says so)."""
        steps = [self._delete_tails(record.state.id)]
        if record.leftovers or not record.object_done:
            steps.insert(0, self._abort_uploads(record.state.id))
        done = True
        for step in steps:
            try:
                await step
            except Exception as exc:
                log.warning("upload %s: leftovers not removed yet: %r", record.state.id, exc)
                done = False
        return done

    async def _abort_uploads(self, upload_id: str, known: str = "") -> None:
        """Abort the upload's multipart upload; without its id, every one under its key."""
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
        prefix = f"{self.folder}{upload_id}{TAIL_MARK}"
        paginator = self.storage.client.get_paginator("list_objects_v2")
        names: list[str] = []
        async for page in paginator.paginate(Bucket=self.storage.bucket, Prefix=prefix):
            names += [e["Key"].removeprefix(self.folder) for e in page.get("Contents", [])]
        doomed = [TUS_FOLDER + name for name in names]
        if doomed:
            await self.storage.delete(doomed)

    async def _remove_all(self, record: S3Record) -> None:
        """Abort or delete the bytes first, the record last: a failure leaves a record."""
        await self._abort_upload(record)
        state = record.state
        # A completion cut short: the object is this upload's alone unless a row has it.
        cut_short = record.object_done and not state.completed
        if cut_short and self.is_published is not None and not await self._published(state.id):
            await self.storage.delete([self.target(state.id)[1]])
        await self._delete_tails(record.state.id)
        await self._delete_record(record.state.id)

    async def _exists(self, key: str) -> bool:
        try:
            await self.storage.client.head_object(Bucket=self.storage.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    async def _upload_exists(self, record: S3Record) -> bool:
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


def locked(upload_id: str, *, retry_after: float | None = None) -> UploadLocked:
    return UploadLocked(
        f"upload {upload_id} is being written by another request; retry shortly",
        retry_after=retry_after,
    )
