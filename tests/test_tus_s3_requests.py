"""What a small tus PATCH costs on S3, in requests: each is S3's latency, and a client that
sends 1 MiB PATCHes pays it per MiB (docs/design/s3-tus.md). Counted at the real store's S3
client against a real SeaweedFS; runs under ``make test-s3``, skipped elsewhere."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from csvstore.config import MiB, Settings
from csvstore.resumable.engine import Body, ResumableUploads
from csvstore.uploads import UploadLimits
from csvstore.wiring import open_store
from tests import s3util

CALLS = ("get_object", "put_object", "head_object", "upload_part", "delete_object",
         "delete_objects", "list_objects_v2", "list_multipart_uploads")  # fmt: skip


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_small_patch_reads_the_record_once_and_writes_it_twice(
    s3_settings: Settings,
) -> None:
    """The record read (once, though the engine asks twice), the lease written, the bytes as a
    segment, the record with the lease released: four; the tail is not read back."""
    row = b"1,2,3\n"
    data = b"a,b,c\n" + row * (MiB // len(row) * 3)
    async with open_store(s3_settings) as store:
        await store.create_session("s1")
        limits = UploadLimits(max_upload_size=1 << 30, chunk_size=64 * 1024, read_timeout=30)
        engine = ResumableUploads.of(store, limits, expiry=3600)
        state = await engine.create(
            length=len(data), session_id="s1", filename="a.csv", metadata="", options={}
        )
        client: Any = store.storage.client  # type: ignore[attr-defined]
        counts: Counter[str] = Counter()
        originals = {name: getattr(client, name) for name in CALLS}

        def counting(name: str) -> Any:
            async def call(**kwargs: Any) -> Any:
                counts[name] += 1
                return await originals[name](**kwargs)

            return call

        for name in CALLS:
            setattr(client, name, counting(name))
        try:
            for offset in (0, MiB):  # the second PATCH has a tail segment before it
                counts.clear()
                chunk = data[offset : offset + MiB]
                saved = await engine.patch(state.id, offset, Body(_one(chunk), len(chunk)))
                assert saved.offset == offset + MiB
                assert counts == {"get_object": 1, "put_object": 3}, (offset, counts)
        finally:
            for name, original in originals.items():
                setattr(client, name, original)
        rest = data[2 * MiB :]
        done = await engine.patch(state.id, 2 * MiB, Body(_one(rest), len(rest)))
        assert done.completed
        assert s3util.read_object(s3_settings, f"{done.file_id}.csv") == data
