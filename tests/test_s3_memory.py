"""What an upload to S3 holds in memory while its parts are sent: a part filling and (for a
multipart upload) one part in flight, no copies of either (issue 19, item 5). Measured with
tracemalloc against a real SeaweedFS; runs under ``make test-s3``, skipped elsewhere."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from csvstore.config import Settings
from csvstore.config_values import MiB
from csvstore.resumable.engine import Body, ResumableUploads
from csvstore.storage import s3 as s3_storage
from csvstore.uploads import UploadLimits
from csvstore.wiring import open_store
from tests import s3util

ROW = b"12345,abcdef,3.14159,hello world\n"
CHUNK = 256 * 1024


def _data(size: int) -> bytes:
    return (b"a,b,c,d\n" + ROW * (size // len(ROW) + 1))[: size - 1] + b"\n"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


async def test_a_multipart_upload_holds_two_parts_at_most(s3_settings: Settings) -> None:
    """Before: the part joined from its chunks while the previous one was in flight, and
    botocore's BytesIO of it copied again by aiohttp (31 MiB for 10 MiB parts)."""
    part = 10 * MiB
    data = _data(4 * part + MiB)
    async with open_store(replace(s3_settings, s3_part_size=part)) as store:
        storage = store.storage
        writer = await storage.begin("00000000-0000-4000-8000-000000000001.csv")
        tracemalloc.start()
        try:
            async for chunk in _chunks(data):
                await writer.write(chunk)
            await writer.commit()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert s3util.read_object(s3_settings, writer.key) == data
    # Two parts, the filling one's over-allocation, the checksums' 1 MiB reads.
    assert peak < 2.5 * part + MiB, peak / MiB


async def test_a_tus_patch_holds_one_part_at_most(s3_settings: Settings) -> None:
    """Before: the part copied out of the buffer, then again through botocore's BytesIO
    (16.6 MiB for 5 MiB parts)."""
    data = _data(3 * s3util.TEST_PART_SIZE + MiB)
    async with open_store(s3_settings) as store:
        await store.create_session("s1")
        limits = UploadLimits(max_upload_size=1 << 30, chunk_size=CHUNK, read_timeout=30)
        engine = ResumableUploads.of(store, limits, expiry=3600)
        state = await engine.create(
            length=len(data), session_id="s1", filename="a.csv", metadata="", options={}
        )
        part = engine.require().part_size  # type: ignore[attr-defined]
        tracemalloc.start()
        try:
            done = await engine.patch(state.id, 0, Body(_chunks(data), len(data)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert done.completed
        assert s3util.read_object(s3_settings, f"{done.file_id}.csv") == data
    assert peak < part + 4 * MiB, (peak / MiB, part / MiB)


async def test_parallel_uploads_share_a_bound_on_parts_held(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each upload held up to two parts, however many ran (8 x 128 MiB to SeaweedFS
    peaked at 315 MiB); now the process holds BUFFERED_PARTS_BYTES' worth, here two parts, and
    an upload past 1 MiB waits for room."""
    monkeypatch.setattr(
        s3_storage, "BUFFERED_PARTS_BYTES", 2 * s3util.TEST_PART_SIZE, raising=False
    )
    part = s3util.TEST_PART_SIZE
    data = _data(3 * part + MiB)
    async with open_store(s3_settings) as store:
        storage = store.storage
        writers = [
            await storage.begin(f"00000000-0000-4000-8000-00000000000{n}.csv") for n in range(4)
        ]

        async def upload(writer: Any) -> None:
            async for chunk in _chunks(data):
                await writer.write(chunk)
            await writer.commit()

        tracemalloc.start()
        try:
            await asyncio.gather(*(upload(w) for w in writers))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        for writer in writers:
            assert s3util.read_object(s3_settings, writer.key) == data
    # Two parts and their over-allocation, 1 MiB per upload unreserved, the checksums' reads
    # (19 MiB; 48.8 MiB before).
    assert peak < 3 * part + 5 * MiB, peak / MiB


async def test_uploads_whose_clients_stall_mid_part_do_not_stall_the_others(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound's slots are held while a part fills at its client's pace: two uploads that
    took both slots and then stalled (a trickling client) must not hold every other upload
    of the process. Before: the third upload waited for a slot for as long as they stalled."""
    monkeypatch.setattr(
        s3_storage, "BUFFERED_PARTS_BYTES", 2 * s3util.TEST_PART_SIZE, raising=False
    )
    monkeypatch.setattr(s3_storage, "SLOT_WAIT", 0.5, raising=False)
    data = _data(2 * s3util.TEST_PART_SIZE + MiB)
    async with open_store(s3_settings) as store:
        storage = store.storage
        stalled = [
            await storage.begin(f"00000000-0000-4000-8000-00000000001{n}.csv") for n in range(2)
        ]
        for writer in stalled:  # past the unreserved MiB: each holds a slot, then nothing
            await writer.write(b"a,b\n" + ROW * (2 * MiB // len(ROW)))
        other = await storage.begin("00000000-0000-4000-8000-000000000020.csv")
        async with asyncio.timeout(30):
            async for chunk in _chunks(data):
                await other.write(chunk)
            await other.commit()
        assert s3util.read_object(s3_settings, other.key) == data
        for writer in stalled:
            await writer.abort()
        # Every slot is back: a fresh upload takes one at once.
        slots: Any = getattr(storage, "part_slots")  # noqa: B009 (S3Storage's, not Storage's)
        assert slots._value == 2


async def test_parallel_tus_patches_share_the_bound_on_parts_held(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tus PATCH to S3 buffers up to a part; before, each took its part outside the bound
    multipart uploads share, so six at once held six parts. Now a PATCH past the unreserved
    MiB takes one of the bound's slots until it ends, and every slot comes back."""
    monkeypatch.setattr(
        s3_storage, "BUFFERED_PARTS_BYTES", 2 * s3util.TEST_PART_SIZE, raising=False
    )
    monkeypatch.setattr(s3_storage, "SLOT_WAIT", 60.0, raising=False)
    data = _data(2 * s3util.TEST_PART_SIZE + MiB)
    async with open_store(s3_settings) as store:
        await store.create_session("s1")
        limits = UploadLimits(max_upload_size=1 << 30, chunk_size=CHUNK, read_timeout=30)
        engine = ResumableUploads.of(store, limits, expiry=3600)
        states = [
            await engine.create(
                length=len(data), session_id="s1", filename=f"{n}.csv", metadata="", options={}
            )
            for n in range(6)
        ]
        part = engine.require().part_size  # type: ignore[attr-defined]
        tracemalloc.start()
        try:
            done = await asyncio.gather(
                *(engine.patch(s.id, 0, Body(_chunks(data), len(data))) for s in states)
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        for state in done:
            assert state.completed
            assert s3util.read_object(s3_settings, f"{state.file_id}.csv") == data
        slots: Any = getattr(store.storage, "part_slots")  # noqa: B009 (S3Storage's)
        assert slots._value == 2
    # Two parts and their over-allocation, 1 MiB per upload unreserved, the pipeline's
    # blocks and the checksums' reads; six parts before (40.8 MiB).
    assert peak < 3 * part + 10 * MiB, (peak / MiB, part / MiB)  # 21.4 MiB here
