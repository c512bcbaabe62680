"""What a small tus PATCH costs on S3, in requests: each is S3's latency, and a client that
sends 1 MiB PATCHes pays it per MiB (docs/design/s3-tus.md). Counted at the real store's S3
client against a real SeaweedFS; runs under ``make test-s3``, skipped elsewhere."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from csvstore.config import Settings
from csvstore.config_values import MiB
from csvstore.errors import UploadLocked, UploadNotFound
from csvstore.resumable.engine import Body, ResumableUploads
from csvstore.service import CsvStore
from csvstore.storage.s3 import tus_file_id
from csvstore.uploads import UploadLimits
from csvstore.wiring import open_store
from tests import s3util

CALLS = ("get_object", "put_object", "head_object", "upload_part", "delete_object",
         "delete_objects", "list_objects_v2", "list_multipart_uploads")  # fmt: skip


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_small_patch_reads_the_record_once_and_writes_it_once(
    s3_settings: Settings,
) -> None:
    """The record read (once, though the engine asks twice), the bytes as a segment, the
    record (conditional on the ETag read): three; no lease is written for a PATCH that cuts
    no part, and the tail is not read back."""
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
                assert counts == {"get_object": 1, "put_object": 2}, (offset, counts)
        finally:
            for name, original in originals.items():
                setattr(client, name, original)
        rest = data[2 * MiB :]
        done = await engine.patch(state.id, 2 * MiB, Body(_one(rest), len(rest)))
        assert done.completed
        assert s3util.read_object(s3_settings, f"{done.file_id}.csv") == data


ROW = b"1,2,3\n"
DATA = b"a,b,c\n" + ROW * (3 * MiB // len(ROW))


def _tus_names(settings: Settings, upload_id: str) -> list[str]:
    objects, uploads = s3util.listing(settings)
    mine = f"{tus_file_id(upload_id)}.csv"
    return sorted(n for n in objects if n.startswith(f"tus/{upload_id}")) + [
        n for n in uploads if n == mine
    ]


async def _started(store: CsvStore) -> tuple[ResumableUploads, str]:
    """An upload with one 1 MiB PATCH acknowledged (a tail segment)."""
    await store.create_session("s1")
    limits = UploadLimits(max_upload_size=1 << 30, chunk_size=64 * 1024, read_timeout=30)
    engine = ResumableUploads.of(store, limits, expiry=3600)
    state = await engine.create(
        length=len(DATA), session_id="s1", filename="a.csv", metadata="", options={}
    )
    await engine.patch(state.id, 0, Body(_one(DATA[:MiB]), MiB))
    return engine, state.id


def _on_segment_put(store: CsvStore, hook: Callable[[], Awaitable[None]], *, before: bool) -> Any:
    """Run ``hook`` around the next tail segment's PUT; returns the original put_object."""
    client: Any = store.storage.client  # type: ignore[attr-defined]
    original = client.put_object
    fired: list[int] = []

    async def put_object(**kwargs: Any) -> Any:
        if ".tail." not in kwargs["Key"] or fired:
            return await original(**kwargs)
        fired.append(1)
        if before:
            await hook()
        answer = await original(**kwargs)
        if not before:
            await hook()
        return answer

    client.put_object = put_object
    return original


@pytest.mark.parametrize("before", [False, True], ids=["segment-then-delete", "delete-first"])
async def test_a_termination_during_a_small_patch_leaves_nothing(
    s3_settings: Settings, before: bool
) -> None:
    """A PATCH that cuts no part holds no lease, so a DELETE meanwhile removes the upload (it
    answered 423 while the PATCH ran); the PATCH then answers 404 and its segment, written
    before or after the removal listed the tails, is deleted: nothing of the upload is left."""
    async with open_store(s3_settings) as store:
        engine, upload_id = await _started(store)
        client: Any = store.storage.client  # type: ignore[attr-defined]
        original = _on_segment_put(store, lambda: engine.terminate(upload_id), before=before)
        try:
            with pytest.raises(UploadNotFound):
                await engine.patch(upload_id, MiB, Body(_one(DATA[MiB : 2 * MiB]), MiB))
        finally:
            client.put_object = original
        assert _tus_names(s3_settings, upload_id) == []


async def test_a_segment_no_record_names_is_removed_by_the_sweep(s3_settings: Settings) -> None:
    """A PATCH that lost its upload to a removal and could not delete its segment (S3 refused,
    or the process died) leaves a segment of no upload: the sweep removes it, and keeps the
    segments of uploads that exist."""
    async with open_store(s3_settings) as store:
        engine, upload_id = await _started(store)
        orphan = "0" * 32
        s3util.put_object(s3_settings, f"tus/{orphan}.tail.0-6.abcdef", b"1,2,3\n")
        await engine.require().sweep_expired(time.time())
        assert _tus_names(s3_settings, orphan) == []
        assert len([n for n in _tus_names(s3_settings, upload_id) if ".tail." in n]) == 1


async def test_two_small_patches_at_once_one_wins(s3_settings: Settings) -> None:
    """Two PATCHes at one offset, neither cutting a part: the record is written once, by the
    first to get there; the other answers 423 and its segment is deleted."""
    async with open_store(s3_settings) as store:
        engine, upload_id = await _started(store)
        client: Any = store.storage.client  # type: ignore[attr-defined]
        second_done = asyncio.Event()
        results: list[Any] = []

        async def second() -> None:
            try:
                results.append(
                    await engine.patch(upload_id, MiB, Body(_one(DATA[MiB:][:500]), 500))
                )
            except Exception as exc:
                results.append(exc)
            second_done.set()

        async def hook() -> None:
            asyncio.get_running_loop().create_task(second())
            await second_done.wait()

        original = _on_segment_put(store, hook, before=True)
        try:
            with pytest.raises(UploadLocked):
                await engine.patch(upload_id, MiB, Body(_one(DATA[MiB : 2 * MiB]), MiB))
        finally:
            client.put_object = original
        assert [r.offset for r in results] == [MiB + 500]
        tails = [n for n in _tus_names(s3_settings, upload_id) if ".tail." in n]
        assert len(tails) == 2
        assert tails[-1].split(".tail.")[1].startswith(f"{MiB}-{MiB + 500}.")
        rest = DATA[MiB + 500 :]
        done = await engine.patch(upload_id, MiB + 500, Body(_one(rest), len(rest)))
        assert s3util.read_object(s3_settings, f"{done.file_id}.csv") == DATA
