"""The test bucket seen directly, apart from the app: every object and multipart upload under a
test's prefix (not only the ones shaped like stored names), to read, plant and clear.

``make test-s3`` sets CSVSTORE_TEST_S3_URL (``s3://bucket``), CSVSTORE_TEST_S3_ENDPOINT_URL
and the AWS credentials; each test then gets a fresh prefix of that bucket.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from csvstore.config import Settings
from csvstore.config_values import parse_s3_url

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef

T = TypeVar("T")

TEST_S3_URL_ENV = "CSVSTORE_TEST_S3_URL"
TEST_S3_ENDPOINT_ENV = "CSVSTORE_TEST_S3_ENDPOINT_URL"
# The minimum S3 allows: more of the suite's uploads span several parts.
TEST_PART_SIZE = 5 * 1024 * 1024


def configured_s3_url() -> str:
    return os.environ.get(TEST_S3_URL_ENV, "")


def fresh_prefix_url() -> str:
    """A new, empty prefix of the test bucket: ``s3://bucket/test-<hex>``."""
    bucket, _ = parse_s3_url(configured_s3_url())
    return f"s3://{bucket}/test-{uuid.uuid4().hex[:16]}"


class _Clients:
    """One S3 client per endpoint for the whole test run, on an event loop of its own in a
    background thread: opening a client costs a tenth of a second or more, and the suite
    looks at the bucket several times per test."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[tuple[str, str], S3Client] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = threading.Lock()

    def run(self, settings: Settings, op: Callable[[S3Client], Awaitable[T]]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, daemon=True).start()
                atexit.register(self.close)
        loop = self._loop

        async def go() -> T:
            return await op(await self._client(settings))

        return asyncio.run_coroutine_threadsafe(go(), loop).result()

    async def _client(self, settings: Settings) -> S3Client:
        from csvstore.storage.s3 import S3Storage

        where = (settings.s3_endpoint_url, settings.s3_region)
        if where not in self._clients:
            storage = await self._stack.enter_async_context(
                S3Storage.open(
                    settings.storage,
                    endpoint_url=settings.s3_endpoint_url,
                    region=settings.s3_region,
                    part_size=settings.s3_part_size,
                )
            )
            self._clients[where] = storage.client
        return self._clients[where]

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._stack.aclose(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)


_clients = _Clients()


def _run(settings: Settings, op: Callable[[S3Client, str, str], Awaitable[T]]) -> T:
    bucket, prefix = parse_s3_url(settings.storage)
    return _clients.run(settings, lambda client: op(client, bucket, prefix))


async def _objects(client: S3Client, bucket: str, prefix: str) -> set[str]:
    found = set()
    async for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix
    ):
        found |= {entry["Key"].removeprefix(prefix) for entry in page.get("Contents", [])}
    return found


async def _uploads(client: S3Client, bucket: str, prefix: str) -> list[tuple[str, str]]:
    found = []
    async for page in client.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=prefix
    ):
        found += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
    return found


def objects(settings: Settings) -> set[str]:
    """Every object under the prefix, by its name after the prefix."""
    return _run(settings, _objects)


def multipart_uploads(settings: Settings) -> list[str]:
    """Names (after the prefix) of the multipart uploads in progress under the prefix."""

    async def op(client: S3Client, bucket: str, prefix: str) -> list[str]:
        return sorted(key.removeprefix(prefix) for key, _ in await _uploads(client, bucket, prefix))

    return _run(settings, op)


def listing(settings: Settings) -> tuple[set[str], list[str]]:
    """(objects, multipart uploads) under the prefix, by name after the prefix; one client."""

    async def op(client: S3Client, bucket: str, prefix: str) -> tuple[set[str], list[str]]:
        uploads = await _uploads(client, bucket, prefix)
        names = sorted(key.removeprefix(prefix) for key, _ in uploads)
        return await _objects(client, bucket, prefix), names

    return _run(settings, op)


def part_sizes(settings: Settings) -> dict[str, list[int]]:
    """The sizes of the parts sent so far to each multipart upload in progress, by name."""

    async def op(client: S3Client, bucket: str, prefix: str) -> dict[str, list[int]]:
        found = {}
        for key, upload_id in await _uploads(client, bucket, prefix):
            sizes: list[int] = []
            try:
                async for page in client.get_paginator("list_parts").paginate(
                    Bucket=bucket, Key=key, UploadId=upload_id
                ):
                    sizes += [part["Size"] for part in page.get("Parts", [])]
            except client.exceptions.NoSuchUpload:
                continue  # completed or aborted since it was listed
            found[key.removeprefix(prefix)] = sizes
        return found

    return _run(settings, op)


def read_object(settings: Settings, name: str) -> bytes | None:
    async def op(client: S3Client, bucket: str, prefix: str) -> bytes | None:
        try:
            response = await client.get_object(Bucket=bucket, Key=prefix + name)
        except client.exceptions.NoSuchKey:
            return None
        async with response["Body"] as body:
            return await body.read()

    return _run(settings, op)


def put_object(settings: Settings, name: str, data: bytes) -> None:
    async def op(client: S3Client, bucket: str, prefix: str) -> None:
        await client.put_object(Bucket=bucket, Key=prefix + name, Body=data)

    _run(settings, op)


def delete_object(settings: Settings, name: str) -> None:
    async def op(client: S3Client, bucket: str, prefix: str) -> None:
        await client.delete_object(Bucket=bucket, Key=prefix + name)

    _run(settings, op)


def start_multipart_upload(settings: Settings, name: str) -> str:
    """A multipart upload left open, as a process that died mid-upload leaves it."""

    async def op(client: S3Client, bucket: str, prefix: str) -> str:
        created = await client.create_multipart_upload(Bucket=bucket, Key=prefix + name)
        return created["UploadId"]

    return _run(settings, op)


def clear(settings: Settings) -> None:
    """Abort every multipart upload and delete every object under the prefix."""

    async def op(client: S3Client, bucket: str, prefix: str) -> None:
        for key, upload_id in await _uploads(client, bucket, prefix):
            await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        names = sorted(await _objects(client, bucket, prefix))
        for first in range(0, len(names), 1000):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": prefix + name} for name in names[first : first + 1000]
            ]
            await client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})

    _run(settings, op)
