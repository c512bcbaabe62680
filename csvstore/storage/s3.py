"""Stored files as objects in an S3-compatible bucket, under a prefix: one PutObject for
a small upload, else a multipart upload (at most two parts in memory, and all uploads
BUFFERED_PARTS_BYTES). Only keys shaped like stored names are ever listed or removed: the
bucket may be shared."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from botocore.loaders import Loader, create_loader

from csvstore.config_values import parse_s3_url
from csvstore.storage.local import READ_CHUNK, STORE_MARKER
from csvstore.storage.local import STORED_NAME as STORED_NAME  # resumable.s3 imports it

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger("csvstore.storage")

# tus uploads' records (resumable/s3.py); their multipart uploads have the final key.
TUS_FOLDER = "tus/"
# S3's limits: parts per upload, and keys per DeleteObjects request.
MAX_PARTS = 10_000
DELETE_BATCH = 1000
# Each upload in flight holds a connection; botocore's default pool is 10.
MAX_CONNECTIONS = 128
# Parts buffered by all the uploads of a process, filling or in flight, at most this many
# bytes' worth (at least two parts); an upload past UNRESERVED bytes waits for room.
BUFFERED_PARTS_BYTES = 64 * 1024 * 1024
UNRESERVED = 1024 * 1024
# Slots are held while a part fills at its client's pace: a client stalling mid-part must not
# stall everyone's uploads, so past this wait a part fills unbounded.
SLOT_WAIT = 2.0
# The checksum fields S3 may return for a part; CompleteMultipartUpload wants them back.
_PART_CHECKSUMS = (
    "ChecksumCRC32",
    "ChecksumCRC32C",
    "ChecksumCRC64NVME",
    "ChecksumSHA1",
    "ChecksumSHA256",
)


@functools.cache
def _model_loader() -> Loader:
    """botocore's reader of its service descriptions, shared by every client (it only reads
    and caches JSON files; cost: bench/RESULTS.md)."""
    return create_loader()


def tus_file_id(upload_id: str) -> str:
    return str(uuid.UUID(hex=upload_id))


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_not_found(exc: ClientError) -> bool:
    return _error_code(exc) in {"404", "NoSuchKey", "NotFound"}


class PartBody(io.BytesIO):
    """Bytes to send, as a file read in small copies: botocore turns a bytes Body into a
    BytesIO, whose ``getbuffer()`` (aiohttp sizing it) copies it whole; a bytearray is
    copied whole by aiohttp's slice and again by the transport's buffer (bench/RESULTS.md)."""

    def __init__(self, data: bytes | bytearray) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._at = 0

    def getbuffer(self) -> memoryview:
        return self._view[:]

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._at + size
        chunk = bytes(self._view[self._at : end])
        self._at += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at


class S3Writer:
    """One upload on its way into the bucket; nothing is visible under its key before commit."""

    holds_parts = True
    holds_upload = False

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.key = key
        self.size = 0
        self.journal: bytes | None = None
        self._storage = storage
        self._object_key = storage.object_key(key)
        # The part being filled, never more than a part: it is sent as it is, no join.
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._sending: asyncio.Task[None] | None = None
        self._finished = False
        self._slot = False  # one of the storage's part slots, for the part filling
        self._waived = False  # no slot came within SLOT_WAIT: this part fills without one

    async def write(self, chunk: bytes) -> None:
        if self._finished:
            raise RuntimeError(f"write to a finished upload of {self.key}")
        self.size += len(chunk)
        size = self._storage.part_size
        view = memoryview(chunk)
        await self._reserve(len(view))
        while len(self._buffer) + len(view) >= size:
            room = size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            await self._send_part()
            await self._reserve(len(view))
        self._buffer += view

    async def _reserve(self, more: int) -> None:
        if self._slot or self._waived or len(self._buffer) + more <= UNRESERVED:
            return
        try:
            async with asyncio.timeout(SLOT_WAIT):
                await self._storage.part_slots.acquire()
            self._slot = True
        except TimeoutError:
            self._waived = True

    async def _send_part(self) -> None:
        client, bucket = self._storage.client, self._storage.bucket
        body, self._buffer = self._buffer, bytearray()
        slot, self._slot = self._slot, False  # goes with the body
        self._waived = False
        try:
            if self._upload_id is None:
                created = await client.create_multipart_upload(
                    Bucket=bucket, Key=self._object_key, ContentType="text/csv"
                )
                self._upload_id = created["UploadId"]
            await self._wait_for_part()
            number = len(self._parts) + 1
            if number > MAX_PARTS:
                raise ValueError(f"upload of {self.key} needs more than {MAX_PARTS} parts")
        except BaseException:
            if slot:
                self._storage.part_slots.release()
            raise
        # A placeholder keeps the numbering; the task fills in the ETag and checksum.
        self._parts.append({"PartNumber": number})
        self._sending = asyncio.create_task(self._upload_part(number, body))
        if slot:  # a callback, not a finally: a task cancelled before it ran runs no finally
            self._sending.add_done_callback(lambda _: self._storage.part_slots.release())

    async def _upload_part(self, number: int, body: bytearray) -> None:
        assert self._upload_id is not None
        sent = await self._storage.client.upload_part(
            Bucket=self._storage.bucket,
            Key=self._object_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=PartBody(body),
        )
        del body
        part: dict[str, Any] = {"PartNumber": number, "ETag": sent["ETag"]}
        for name in _PART_CHECKSUMS:
            if sent.get(name):
                part[name] = sent.get(name)
        self._parts[number - 1] = cast("CompletedPartTypeDef", part)

    def _free_slot(self) -> None:
        if self._slot:
            self._slot = False
            self._storage.part_slots.release()

    async def _wait_for_part(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None:
            await sending

    async def commit(self) -> None:
        if self._finished:
            raise RuntimeError(f"commit of a finished upload of {self.key}")
        client, bucket = self._storage.client, self._storage.bucket
        try:
            if self._upload_id is None:
                body, self._buffer = self._buffer, bytearray()
                await client.put_object(
                    Bucket=bucket,
                    Key=self._object_key,
                    Body=PartBody(body),
                    ContentType="text/csv",
                )
                self._free_slot()
            else:
                if self._buffer:
                    await self._send_part()
                await self._wait_for_part()
                await client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self._object_key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except BaseException:
            await self.abort()
            # The request may have succeeded and only its answer been lost: make sure.
            with contextlib.suppress(Exception):
                await asyncio.shield(client.delete_object(Bucket=bucket, Key=self._object_key))
            raise
        self._finished = True

    async def abort(self) -> None:
        """Leave nothing (shielded); if S3 is unreachable, the next ``prepare`` aborts it."""
        if self._finished:
            return
        self._finished = True
        self._buffer = bytearray()
        self._free_slot()
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(BaseException):
                await sending
        if self._upload_id is not None:
            try:
                await asyncio.shield(
                    self._storage.client.abort_multipart_upload(
                        Bucket=self._storage.bucket, Key=self._object_key, UploadId=self._upload_id
                    )
                )
            except Exception as exc:  # left for prepare() to remove
                log.warning("could not abort the multipart upload of %s: %r", self.key, exc)


class S3Storage:
    def __init__(self, client: S3Client, url: str, *, part_size: int) -> None:
        self.client = client
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.part_size = part_size
        self.part_slots = asyncio.Semaphore(max(2, BUFFERED_PARTS_BYTES // part_size))

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        endpoint_url: str = "",
        region: str = "",
        part_size: int,
        max_object_size: int = 0,
    ) -> AsyncIterator[S3Storage]:
        """A client for the bucket of ``url``; credentials from botocore's usual places."""
        config = AioConfig(
            max_pool_connections=MAX_CONNECTIONS,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            # Path-style URLs work on every S3-compatible service without DNS set-up.
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        part_size = max(part_size, -(-max_object_size // MAX_PARTS))
        session = get_session()
        session.register_component("data_loader", _model_loader())
        async with session.create_client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            config=config,
        ) as client:
            yield cls(client, url, part_size=part_size)

    def object_key(self, key: str) -> str:
        return self.prefix + key

    async def _check_bucket(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise RuntimeError(
                f"S3 bucket {self.bucket!r} cannot be used ({_error_code(exc) or exc}): "
                "check that it exists, the endpoint, and the credentials"
            ) from exc

    async def prepare(
        self, *, temp_min_age: float = 0.0, abandoned: frozenset[str] = frozenset()
    ) -> int:
        """Check the bucket; abort multipart uploads older than ``temp_min_age`` or of an
        ``abandoned`` name; how many were aborted."""
        await self._check_bucket()
        cutoff = time.time() - temp_min_age
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                name = upload["Key"].removeprefix(self.prefix)
                if not STORED_NAME.match(name):
                    continue
                young = temp_min_age and upload["Initiated"].timestamp() >= cutoff
                if young and name not in abandoned:
                    continue
                if await self._is_resumable(name):
                    continue  # a tus upload: it expires by itself
                with contextlib.suppress(ClientError):  # finished or aborted meanwhile
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    async def _is_resumable(self, name: str) -> bool:
        """Whether a multipart upload of a stored name belongs to a live tus upload."""
        upload_id = name.removesuffix(".csv").replace("-", "")
        record = f"{self.prefix}{TUS_FOLDER}{upload_id}.json"
        try:
            await self.client.head_object(Bucket=self.bucket, Key=record)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    async def begin(self, key: str) -> S3Writer:
        return S3Writer(self, key)

    async def read(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        if length == 0:
            return
        byte_range = ""
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            byte_range = f"bytes={start}-{end}"
        try:
            if byte_range:
                response = await self.client.get_object(
                    Bucket=self.bucket, Key=self.object_key(key), Range=byte_range
                )
            else:
                response = await self.client.get_object(
                    Bucket=self.bucket, Key=self.object_key(key)
                )
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(f"no stored object {key}") from exc
            raise
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk

    async def delete(self, keys: list[str]) -> None:
        """Remove objects; one already gone is not an error."""
        if len(keys) == 1:
            await self.client.delete_object(Bucket=self.bucket, Key=self.object_key(keys[0]))
            return
        for first in range(0, len(keys), DELETE_BATCH):
            batch = keys[first : first + DELETE_BATCH]
            result = await self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self.object_key(k)} for k in batch], "Quiet": True},
            )
            errors = [e for e in result.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise OSError(
                    f"S3 refused to delete {len(errors)} object(s), e.g. "
                    f"{errors[0].get('Key')}: {errors[0].get('Code')} {errors[0].get('Message')}"
                )

    async def sync(self) -> None:
        """Nothing to do: an object is durable once its PUT (or completion) answers."""

    async def restore(self, key: str, data: bytes) -> None:
        await self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)

    async def keys(self) -> set[str]:
        found: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for entry in page.get("Contents", []):
                name = entry["Key"].removeprefix(self.prefix)
                if STORED_NAME.match(name):
                    found.add(name)
        return found

    async def read_store_id(self) -> str | None:
        await self._check_bucket()
        try:
            response = await self.client.get_object(
                Bucket=self.bucket, Key=self.object_key(STORE_MARKER)
            )
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise
        async with response["Body"] as body:
            return (await body.read()).decode(errors="replace").strip()

    async def create_store_id(self, store_id: str) -> str:
        try:
            # Conditional: of instances starting at once, exactly one PUT succeeds.
            await self.client.put_object(
                Bucket=self.bucket,
                Key=self.object_key(STORE_MARKER),
                Body=f"{store_id}\n".encode(),
                ContentType="text/plain",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if _error_code(exc) not in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                raise
            found = await self.read_store_id()
            if found is None:
                raise OSError("the store id marker was refused but is not there") from exc
            return found
        return store_id

    async def stat(self, key: str) -> tuple[int, float] | None:
        """(size, last modified: for a multipart upload, its start)."""
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise
        return head["ContentLength"], head["LastModified"].timestamp()

    def free_bytes(self) -> int | None:
        return None  # the store grows as needed; its quota is not ours to see

    async def probe_writable(self) -> None:
        """Write and remove a small object, always the same name: a probe cut off halfway
        leaves one leftover, which the next probe removes."""
        probe = f"{self.prefix}.csvstore-probe"
        await self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
        await self.client.delete_object(Bucket=self.bucket, Key=probe)
