"""What a finished S3 tus upload leaves besides its object when S3 fails at the wrong moment:
a multipart upload left open, tail segments. The record says so, and the sweep (and the
check) remove them as soon as S3 answers, rather than at the upload's expiry or never.

Found by the fault test (tests/test_faults.py): after SeaweedFS stops, a completed upload
had kept its tail segments, and another a multipart upload under its file's name. Here the
failure is made at the S3 client of the real store (a call that raises as an unreachable
S3 does), against a real SeaweedFS. Runs under ``make test-s3``; skipped elsewhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import EndpointConnectionError

from csvstore.config import Settings
from csvstore.maintenance.reconcile import reconcile
from csvstore.resumable.engine import Body, ResumableUploads
from csvstore.service import CsvStore
from csvstore.storage.s3 import tus_file_id
from csvstore.uploads import UploadLimits
from csvstore.wiring import open_store
from tests import s3util

LIMITS = UploadLimits(max_upload_size=1 << 30, chunk_size=64 * 1024, read_timeout=30)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _body(data: bytes) -> Body:
    return Body(_chunks(data), len(data))


@contextmanager
def refusing(store: CsvStore, *operations: str) -> Iterator[list[str]]:
    """Each named call of the store's S3 client fails as an unreachable endpoint does."""
    client: Any = store.storage.client  # type: ignore[attr-defined]
    refused: list[str] = []
    originals = {name: getattr(client, name) for name in operations}

    def failing(name: str) -> Any:
        async def call(**kwargs: Any) -> Any:
            refused.append(name)
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

        return call

    for name in operations:
        setattr(client, name, failing(name))
    try:
        yield refused
    finally:
        for name, original in originals.items():
            setattr(client, name, original)


def leftovers(settings: Settings, upload_id: str, file_name: str) -> list[str]:
    objects, uploads = s3util.listing(settings)
    tails = sorted(name for name in objects if name.startswith(f"tus/{upload_id}.tail."))
    return tails + [name for name in uploads if name == file_name]


def record_of(settings: Settings, upload_id: str) -> dict[str, Any]:
    raw = s3util.read_object(settings, f"tus/{upload_id}.json")
    assert raw is not None
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


async def _upload_in_three(
    engine: ResumableUploads, store: CsvStore, data: bytes, refuse: tuple[str, ...]
) -> tuple[str, str]:
    """Two PATCHes (two tail segments), then the last with ``refuse`` failing: (upload, file)."""
    state = await engine.create(
        length=len(data), session_id="s1", filename="a.csv", metadata="", options={}
    )
    third = len(data) // 3
    await engine.patch(state.id, 0, _body(data[:third]))
    await engine.patch(state.id, third, _body(data[third : 2 * third]))
    with refusing(store, *refuse) as refused:
        done = await engine.patch(state.id, 2 * third, _body(data[2 * third :]))
    assert refused, f"none of {refuse} was called"
    assert done.completed
    assert done.file_id is not None
    return state.id, done.file_id


DATA = b"id,name\n" + b"".join(b"%d,row %d\n" % (n, n) for n in range(20_000))


async def test_tails_s3_refused_to_delete_at_completion_go_with_the_next_sweep(
    s3_settings: Settings,
) -> None:
    async with open_store(s3_settings) as store:
        await store.create_session("s1")
        engine = ResumableUploads.of(store, LIMITS, expiry=3600)
        refuse = ("delete_objects", "delete_object")
        upload_id, file_id = await _upload_in_three(engine, store, DATA, refuse)
        name = f"{file_id}.csv"
        assert len(leftovers(s3_settings, upload_id, name)) == 2  # the two segments
        assert s3util.read_object(s3_settings, name) == DATA  # the file itself is whole
        await engine.require().sweep_expired(time.time())
        assert leftovers(s3_settings, upload_id, name) == []
        assert record_of(s3_settings, upload_id).get("leftovers") is False
        assert (await engine.state(upload_id)).completed  # still answers as complete


async def test_a_multipart_upload_left_open_by_a_refused_abort_goes_with_the_next_sweep(
    s3_settings: Settings,
) -> None:
    """Under a part's size the object is one PUT, and the multipart upload started at the
    creation is aborted: if S3 refuses that, it must not outlive the upload's record."""
    async with open_store(s3_settings) as store:
        await store.create_session("s1")
        engine = ResumableUploads.of(store, LIMITS, expiry=3600)
        upload_id, file_id = await _upload_in_three(
            engine, store, DATA, ("abort_multipart_upload",)
        )
        name = f"{file_id}.csv"
        assert name in leftovers(s3_settings, upload_id, name)
        await engine.require().sweep_expired(time.time())
        assert leftovers(s3_settings, upload_id, name) == []
        assert s3util.read_object(s3_settings, name) == DATA


async def test_the_check_removes_a_finished_uploads_leftovers(s3_settings: Settings) -> None:
    async with open_store(s3_settings) as store:
        await store.create_session("s1")
        engine = ResumableUploads.of(store, LIMITS, expiry=3600)
        refuse = ("delete_objects", "delete_object", "abort_multipart_upload")
        upload_id, file_id = await _upload_in_three(engine, store, DATA, refuse)
        name = f"{file_id}.csv"
        assert len(leftovers(s3_settings, upload_id, name)) == 3
        await reconcile(store)
        assert leftovers(s3_settings, upload_id, name) == []
        assert s3util.read_object(s3_settings, name) == DATA


async def test_a_retried_creation_leaves_no_second_multipart_upload(
    s3_settings: Settings,
) -> None:
    """S3 made the multipart upload but its answer was lost, and the SDK asked again: two
    uploads under one name, the record naming the second. The first goes at completion."""
    async with open_store(s3_settings) as store:
        await store.create_session("s1")
        engine = ResumableUploads.of(store, LIMITS, expiry=3600)
        client: Any = store.storage.client  # type: ignore[attr-defined]
        original = client.create_multipart_upload

        async def twice(**kwargs: Any) -> Any:
            await original(**kwargs)  # its answer "lost"
            answer = await original(**kwargs)
            answer["ResponseMetadata"]["RetryAttempts"] = 1
            return answer

        client.create_multipart_upload = twice
        try:
            state = await engine.create(
                length=len(DATA), session_id="s1", filename="a.csv", metadata="", options={}
            )
        finally:
            client.create_multipart_upload = original
        name = f"{tus_file_id(state.id)}.csv"
        assert s3util.listing(s3_settings)[1].count(name) == 2
        done = await engine.patch(state.id, 0, _body(DATA))
        assert done.completed
        assert f"{done.file_id}.csv" == name
        assert leftovers(s3_settings, state.id, name) == []
        assert s3util.read_object(s3_settings, name) == DATA
