"""S3-compatible storage: settings, multipart uploads, aborts, ranges, integrity, and the
consistency check over a bucket.

The tests that need a bucket run under ``make test-s3`` (a real SeaweedFS with
authentication on) and skip elsewhere; the API suite itself also runs on S3 there, through
the ``settings`` fixture.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from csvstore.commandline import settings_from
from csvstore.config import Settings, convert
from csvstore.config_values import MiB, parse_s3_url
from csvstore.db.queries import Query
from csvstore.db.sqlite import Executor
from csvstore.identity import StoreMismatch
from csvstore.intents import this_owner
from csvstore.maintenance.reconcile import reconcile, startup_check
from csvstore.metrics import TimedStorage
from csvstore.storage.local import STORE_MARKER
from csvstore.storage.s3 import S3Storage
from csvstore.web.keys import STORE_KEY
from csvstore.wiring import open_store
from tests import s3util
from tests.conftest import (
    Client,
    MakeClient,
    assert_consistent,
    assert_problem,
    dead_owner,
    stored_bytes,
    stored_state,
    upload_form,
)
from tests.serverproc import ServerProcess

LINE = b"12345,some text,3.14159,2024-01-01\n"


def csv_of_size(size: int) -> bytes:
    body = b"id,text,value,day\n" + LINE * (size // len(LINE) + 1)
    return body[:size]


def s3_of(client: Client) -> S3Storage:
    app = client.app
    assert app is not None
    storage = app[STORE_KEY].storage
    assert isinstance(storage, TimedStorage)
    assert isinstance(storage.inner, S3Storage)
    return storage.inner


# Settings: no server needed.


def test_storage_setting_selects_the_backend(tmp_path: Path) -> None:
    default = Settings(data_dir=tmp_path)
    assert not default.uses_s3
    assert default.uploads_dir == tmp_path / "uploads"
    assert default.temp_dir == tmp_path / "tmp"
    folder = Settings(data_dir=tmp_path, storage="/srv/csv")
    assert not folder.uses_s3
    assert folder.uploads_dir == Path("/srv/csv")
    assert folder.temp_dir == Path("/srv/csv/.tmp")  # same filesystem: rename stays atomic
    assert Settings(storage="s3://bucket/some/prefix").uses_s3
    assert parse_s3_url("s3://bucket/some/prefix") == ("bucket", "some/prefix/")
    assert parse_s3_url("s3://bucket/some/prefix/") == ("bucket", "some/prefix/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("s3://", "s3://B_ad/x", "gs://bucket/x", "s3://a/x"):
        with pytest.raises(ValueError, match=r"S3 bucket name|unsupported storage"):
            convert("storage", bad)


def test_s3_settings_from_flags_and_env() -> None:
    flags = [
        "--storage", "s3://csv-bucket/prod",
        "--s3-endpoint-url", "http://127.0.0.1:9000",
        "--s3-region", "eu-west-1",
        "--s3-part-size", "16MiB",
    ]  # fmt: skip
    settings = settings_from(flags, {})
    assert settings.storage == "s3://csv-bucket/prod"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.s3_region == "eu-west-1"
    assert settings.s3_part_size == 16 * MiB
    env = {"CSVSTORE_STORAGE": "s3://b-1/p", "CSVSTORE_S3_PART_SIZE": "5MiB"}
    assert settings_from([], env).storage == "s3://b-1/p"
    assert Settings().s3_part_size == 8 * MiB
    for bad in ("4MiB", "6GiB"):
        with pytest.raises(ValueError, match="between 5MiB and 5GiB"):
            convert("s3_part_size", bad)


async def test_part_size_grows_so_the_largest_upload_fits_in_10000_parts() -> None:
    async with S3Storage.open(
        "s3://bucket/p", endpoint_url="http://127.0.0.1:9", part_size=8 * MiB, max_object_size=0
    ) as small:
        assert small.part_size == 8 * MiB
    async with S3Storage.open(
        "s3://bucket/p",
        endpoint_url="http://127.0.0.1:9",
        part_size=8 * MiB,
        max_object_size=200 << 30,
    ) as large:
        assert large.part_size * 10_000 >= 200 << 30
        assert large.free_bytes() is None


def test_the_suite_runs_on_the_storage_it_was_asked_for(settings: Settings) -> None:
    assert settings.uses_s3 == bool(s3util.configured_s3_url())


# On a real bucket.


async def test_multipart_upload_with_several_parts(
    make_client: MakeClient, s3_settings: Settings
) -> None:
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "big"})
    data = csv_of_size(17 * MiB + 123)  # parts of 5 MiB: four of them
    resp = await client.post("/api/csv/upload", data=upload_form(data, session_id="big"))
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored_bytes(s3_settings, file["filename"]) == data
    head = await s3_of(client).client.head_object(
        Bucket=parse_s3_url(s3_settings.storage)[0],
        Key=parse_s3_url(s3_settings.storage)[1] + file["filename"],
    )
    assert head["ETag"].strip('"').endswith("-4")  # a multipart object of four parts
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "text/csv"
    download = await client.get(f"/api/csv/files/{file['id']}/content")
    assert await download.read() == data

    small = csv_of_size(1000)  # under one part: a single PUT, no multipart upload
    resp = await client.post("/api/csv/upload", data=upload_form(small, session_id="big"))
    small_file = (await resp.json())["file"]
    head = await s3_of(client).client.head_object(
        Bucket=parse_s3_url(s3_settings.storage)[0],
        Key=parse_s3_url(s3_settings.storage)[1] + small_file["filename"],
    )
    assert "-" not in head["ETag"]
    assert stored_bytes(s3_settings, small_file["filename"]) == small


async def _paused_body(data: bytes, pause_at: int, go_on: asyncio.Event) -> AsyncIterator[bytes]:
    """The body in 1 MiB pieces, stopping at ``pause_at`` until ``go_on`` is set."""
    for start in range(0, len(data), MiB):
        if start == pause_at:
            await go_on.wait()
        yield data[start : start + MiB]


@pytest.mark.parametrize("failure", ["not-a-csv-late", "too-large", "sha256-mismatch"])
async def test_a_failed_multipart_upload_leaves_no_object_and_no_upload(
    make_client: MakeClient, s3_settings: Settings, failure: str
) -> None:
    client = await make_client(replace(s3_settings, max_upload_size=14 * MiB))
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    data = csv_of_size(13 * MiB)
    if failure == "not-a-csv-late":
        data = data[: 12 * MiB] + b"\x00" + data[12 * MiB + 1 :]
    elif failure == "too-large":
        data = csv_of_size(16 * MiB)
    go_on = asyncio.Event()
    form = upload_form(_paused_body(data, 11 * MiB, go_on), session_first=True)
    if failure == "sha256-mismatch":
        form.add_field("sha256", "0" * 64)
    sending = asyncio.create_task(client.post("/api/csv/upload", data=form))
    for _ in range(200):  # two parts are on their way: the multipart upload exists
        if s3util.multipart_uploads(s3_settings):
            break
        await asyncio.sleep(0.05)
    assert len(s3util.multipart_uploads(s3_settings)) == 1
    go_on.set()
    resp = await sending
    expected = {"not-a-csv-late": 400, "too-large": 413, "sha256-mismatch": 400}[failure]
    await assert_problem(resp, expected)
    assert stored_state(s3_settings) == (set(), set(), [])


def _tamper(storage: S3Storage, operation: str) -> list[str]:
    """Give every ``operation`` request a wrong Content-MD5 from now on, as if its bytes had
    been changed on the way; what S3 answered is recorded."""
    wrong = base64.b64encode(hashlib.md5(b"other bytes").digest()).decode()
    answers: list[str] = []

    def before_sign(request: Any, **_: Any) -> None:
        request.headers["Content-MD5"] = wrong

    def after_call(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        answers.append(str(parsed.get("Error", {}).get("Code", http_response.status_code)))

    events = storage.client.meta.events
    events.register(f"before-sign.s3.{operation}", before_sign)
    events.register(f"after-call.s3.{operation}", after_call)
    return answers


@pytest.mark.parametrize(("operation", "size"), [("UploadPart", 12 * MiB), ("PutObject", 1000)])
async def test_bytes_changed_on_the_way_are_refused_and_nothing_is_left(
    make_client: MakeClient, s3_settings: Settings, operation: str, size: int
) -> None:
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    answers = _tamper(s3_of(client), operation)
    resp = await client.post("/api/csv/upload", data=upload_form(csv_of_size(size)))
    body = await assert_problem(resp, 500)
    assert "BadDigest" not in body["detail"]  # internals never reach the client
    assert answers
    assert set(answers) == {"BadDigest"}  # the store checked the digest and said no
    assert stored_state(s3_settings) == (set(), set(), [])


async def test_ranges_are_passed_to_s3(make_client: MakeClient, s3_settings: Settings) -> None:
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    data = csv_of_size(11 * MiB)
    file = (await (await client.post("/api/csv/upload", data=upload_form(data))).json())["file"]
    ranges_asked: list[str | None] = []

    def record(request: Any, **_: Any) -> None:
        asked = request.headers.get("Range")
        ranges_asked.append(asked.decode() if isinstance(asked, bytes) else asked)

    s3_of(client).client.meta.events.register("before-send.s3.GetObject", record)
    url = f"/api/csv/files/{file['id']}/content"
    cases = [
        ("bytes=6000000-6000099", 6_000_000, 6_000_099, "bytes=6000000-6000099"),
        ("bytes=-10", len(data) - 10, len(data) - 1, f"bytes={len(data) - 10}-{len(data) - 1}"),
        ("bytes=11534300-", 11_534_300, len(data) - 1, f"bytes=11534300-{len(data) - 1}"),
    ]
    for header, start, end, sent in cases:
        resp = await client.get(url, headers={"Range": header})
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
        assert await resp.read() == data[start : end + 1]
        assert ranges_asked[-1] == sent  # only the range travelled from S3
    whole = await client.get(url)
    assert await whole.read() == data
    assert ranges_asked[-1] == f"bytes=0-{len(data) - 1}"  # never more than the row's size
    storage = s3_of(client)
    assert b"".join([c async for c in storage.read(file["filename"])]) == data
    assert ranges_asked[-1] is None
    assert b"".join([c async for c in storage.read(file["filename"], 5, 10)]) == data[5:15]
    assert [c async for c in storage.read(file["filename"], 5, 0)] == []
    with pytest.raises(FileNotFoundError):
        [c async for c in storage.read(f"{uuid.uuid4()}.csv")]
    await assert_problem(await client.get(url, headers={"Range": f"bytes={len(data)}-"}), 416)


def _run_check(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "csvstore", "check", "--data-dir", str(settings.data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )


async def test_crash_leftovers_are_removed_by_the_check(
    make_client: MakeClient, s3_settings: Settings
) -> None:
    """What a crash leaves on S3 -- an object whose row was never committed, a multipart
    upload never finished -- is removed; objects that are not csvstore's are never touched."""
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    kept = (await (await client.post("/api/csv/upload", data=upload_form(b"a\n1\n"))).json())[
        "file"
    ]
    lost = (await (await client.post("/api/csv/upload", data=upload_form(b"a\n2\n"))).json())[
        "file"
    ]
    await client.close()
    orphan = f"{uuid.uuid4()}.csv"
    s3util.put_object(s3_settings, orphan, b"a\n3\n")
    s3util.put_object(s3_settings, "notes/readme.txt", b"someone else's")
    s3util.put_object(s3_settings, "report.csv", b"not a stored name")
    dangling = f"{uuid.uuid4()}.csv"
    s3util.start_multipart_upload(s3_settings, dangling)
    s3util.delete_object(s3_settings, lost["filename"])  # a row whose bytes are gone

    # An object being published by a live process (its intent committed, its row not yet)
    # is spared however old it is; an object nobody intends goes at once. A shared store's
    # start-up check spares young multipart uploads: another instance's uploads in flight.
    in_flight = f"{uuid.uuid4()}.csv"
    s3util.put_object(s3_settings, in_flight, b"a\n4\n")
    async with open_store(s3_settings) as store:
        await store.db.write(
            functools.partial(store.repo.add_intent, storage_key=in_flight, owner=this_owner())
        )
        assert store.shared
        report = await startup_check(store)
    assert (report.orphan_files_removed, report.temp_files_removed) == (1, 0)
    assert report.missing_files == [lost["id"]]
    assert orphan not in s3util.objects(s3_settings)
    assert in_flight in s3util.objects(s3_settings)
    assert s3util.multipart_uploads(s3_settings) == [dangling]
    # ... so does the on-demand check of a live store
    checked = _run_check(s3_settings)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"missing bytes: file {lost['id']}" in checked.stdout
    assert in_flight in s3util.objects(s3_settings)

    # Once the multipart upload is old enough (here: at once), and the intent's process is
    # gone, they go.
    async with open_store(s3_settings) as store:
        await store.db.write(
            functools.partial(store.repo.add_intent, storage_key=in_flight, owner=dead_owner())
        )
        report = await reconcile(store, repair=True, verify=True)
    assert report.orphan_files_removed == 1
    assert report.intents_cleared == 1
    assert report.temp_files_removed == 1
    assert report.rows_removed == 1
    assert report.problems == 0
    objects = s3util.objects(s3_settings)
    s3util.delete_object(s3_settings, "notes/readme.txt")
    s3util.delete_object(s3_settings, "report.csv")
    assert objects == {kept["filename"], "notes/readme.txt", "report.csv", STORE_MARKER}
    assert s3util.multipart_uploads(s3_settings) == []
    again = _run_check(s3_settings, "--repair")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removed 0 temp file(s)" in again.stdout
    assert "0 stored file(s) without a row" in again.stdout
    assert_consistent(s3_settings)


async def test_a_changed_object_is_found_by_the_verifying_check(
    make_client: MakeClient, s3_settings: Settings
) -> None:
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    file = (await (await client.post("/api/csv/upload", data=upload_form(b"a\n1\n"))).json())[
        "file"
    ]
    await client.close()
    s3util.put_object(s3_settings, file["filename"], b"a\n9\n")  # same size, other bytes
    checked = _run_check(s3_settings)
    assert checked.returncode == 1
    assert f"size or sha256 differs: file {file['id']}" in checked.stdout
    assert _run_check(s3_settings, "--no-verify").returncode == 0


async def test_an_upload_in_flight_survives_another_instance_starting(
    make_client: MakeClient, s3_settings: Settings
) -> None:
    """Instance A streams a multipart upload; instance B starts (and runs its start-up
    check) on the same bucket meanwhile; A's upload completes and is stored whole."""
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    data = csv_of_size(12 * MiB)
    go_on = asyncio.Event()
    sending = asyncio.create_task(
        client.post("/api/csv/upload", data=upload_form(_paused_body(data, 8 * MiB, go_on)))
    )
    for _ in range(200):
        if s3util.multipart_uploads(s3_settings):
            break
        await asyncio.sleep(0.05)
    assert len(s3util.multipart_uploads(s3_settings)) == 1
    async with open_store(s3_settings) as other:
        report = await startup_check(other)
    assert report.temp_files_removed == 0
    go_on.set()
    resp = await sending
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert stored_bytes(s3_settings, file["filename"]) == data


async def test_a_missing_bucket_is_a_clear_start_up_error(s3_settings: Settings) -> None:
    missing = replace(s3_settings, storage=f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p")
    with pytest.raises(RuntimeError, match=r"no-such-bucket-.* cannot be used"):
        async with open_store(missing) as store:
            await startup_check(store)


async def test_deleting_many_files_removes_every_object(
    make_client: MakeClient, s3_settings: Settings
) -> None:
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "many"})
    uploads = [
        client.post("/api/csv/upload", data=upload_form(b"a\n%d\n" % i, session_id="many"))
        for i in range(30)
    ]
    assert {r.status for r in await asyncio.gather(*uploads)} == {201}
    assert len(s3util.objects(s3_settings) - {STORE_MARKER}) == 30
    assert (await client.delete("/api/csv/sessions/many")).status == 200
    assert stored_state(s3_settings) == (set(), set(), [])


# The store id on S3 (tests/test_identity.py has the local folder's).


async def _store_ids(settings: Settings) -> tuple[str | None, str | None]:
    """(the database's, the storage's), read directly, without claiming anything."""
    async with open_store(settings, claim=False) as store:
        return (
            await store.db.read(store.repo.get_store_id),
            await store.storage.read_store_id(),
        )


async def _uploaded(make_client: MakeClient, count: int = 2) -> list[str]:
    client = await make_client()
    await client.post("/api/csv/sessions", json={"session_id": "s1"})
    names = []
    for i in range(count):
        resp = await client.post("/api/csv/upload", data=upload_form(b"a\n%d\n" % i))
        assert resp.status == 201
        names.append((await resp.json())["file"]["filename"])
    await client.close()
    return names


async def test_foreign_objects_survive_and_the_store_id_is_in_both_halves(
    make_client: MakeClient, s3_settings: Settings
) -> None:
    foreign = {"notes.txt": b"mine\n", "mine.csv": b"a\n1\n", "sub/x.csv": b"x\n"}
    for name, data in foreign.items():
        s3util.put_object(s3_settings, name, data)
    names = await _uploaded(make_client)
    async with open_store(s3_settings) as store:
        report = await reconcile(store)  # no age limit: anything not spared by name goes
    assert report.orphan_files_removed == 0
    checked = _run_check(s3_settings)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name, data in foreign.items():
        assert s3util.read_object(s3_settings, name) == data
        s3util.delete_object(s3_settings, name)
    assert s3util.objects(s3_settings) == {*names, STORE_MARKER}
    recorded, marker = await _store_ids(s3_settings)
    assert recorded is not None
    assert recorded == marker


async def test_another_database_or_prefix_is_refused_on_s3(
    make_client: MakeClient, s3_settings: Settings, tmp_path: Path
) -> None:
    names = await _uploaded(make_client)
    other = Settings(data_dir=tmp_path / "other")
    async with open_store(other):  # another store: a SQLite database and folder of its own
        pass
    wrong_db = replace(s3_settings, database_url=f"sqlite:///{other.database_path}")
    with pytest.raises(StoreMismatch, match=r"belongs to store .* but the storage s3://"):
        async with open_store(wrong_db) as store:
            await reconcile(store)  # no age limit: it would have removed every object
    checked = subprocess.run(
        [sys.executable, "-m", "csvstore", "check", "--data-dir", str(other.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CSVSTORE_DATABASE_URL": ""},
    )
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "check refused" in checked.stderr
    empty = replace(s3_settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreMismatch, match="which this database never recorded"):
        async with open_store(empty) as store:
            await reconcile(store)
    # The right database with another store's storage: refused too.
    other_prefix = replace(s3_settings, storage=s3util.fresh_prefix_url())
    try:
        async with open_store(replace(other_prefix, database_url=f"sqlite:///{tmp_path / 'x.db'}")):
            pass
        with pytest.raises(StoreMismatch, match="belongs to store"):
            async with open_store(other_prefix):
                pass
    finally:
        s3util.clear(other_prefix)
    assert s3util.objects(s3_settings) == {*names, STORE_MARKER}
    assert_consistent(s3_settings)


async def test_an_s3_deployment_from_before_the_store_id_is_adopted(
    make_client: MakeClient, s3_settings: Settings
) -> None:
    names = await _uploaded(make_client)
    s3util.delete_object(s3_settings, STORE_MARKER)
    async with open_store(s3_settings, claim=False) as store:

        async def forget(x: Executor) -> None:
            await x.all(Query("drop", "DROP TABLE store_identity", False))
            await x.all(Query("unrecord", "DELETE FROM schema_migrations WHERE version = 5", False))

        await store.db.write(forget)
    client = await make_client()
    listed = await (await client.get("/api/csv/sessions/s1")).json()
    assert sorted(f["filename"] for f in listed["csv_files"]) == sorted(names)
    await client.close()
    recorded, marker = await _store_ids(s3_settings)
    assert recorded is not None
    assert recorded == marker


async def test_instances_starting_together_agree_on_one_store_id_on_s3(
    s3_settings: Settings,
) -> None:
    async def start() -> tuple[str | None, str | None]:
        async with open_store(s3_settings) as store:
            return (
                await store.db.read(store.repo.get_store_id),
                await store.storage.read_store_id(),
            )

    seen = await asyncio.gather(*[start() for _ in range(4)])
    assert len(set(seen)) == 1
    recorded, marker = seen[0]
    assert recorded is not None
    assert recorded == marker
    # The marker's create is conditional: a second id never replaces the first.
    async with S3Storage.open(
        s3_settings.storage,
        endpoint_url=s3_settings.s3_endpoint_url,
        part_size=s3_settings.s3_part_size,
    ) as storage:
        fresh = replace(s3_settings, storage=s3util.fresh_prefix_url())
        try:
            racers = [S3Storage(storage.client, fresh.storage, part_size=storage.part_size)] * 3
            won = await asyncio.gather(*[s.create_store_id(uuid.uuid4().hex) for s in racers])
            assert len(set(won)) == 1
            assert await racers[0].read_store_id() == won[0]
        finally:
            s3util.clear(fresh)


def test_a_check_during_a_publish_spares_the_object_before_its_row(s3_settings: Settings) -> None:
    """The object of an upload is complete in the bucket a moment before its row commits. A
    check then used to find it without a row and, since S3 dates an object from the start
    of its upload, old: it was removed and the client still got its 201. The upload's intent
    spares it now (the server is held between the two by CSVSTORE_PAUSE_AT)."""
    server = ServerProcess(
        s3_settings.data_dir, env={"CSVSTORE_PAUSE_AT": "publish.bytes_published:8"}
    )
    server.start()
    data = csv_of_size(3 * MiB)
    try:
        assert requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s"}).ok
        before = s3util.objects(s3_settings)
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(
                requests.post,
                f"{server.url}/api/csv/upload",
                data={"session_id": "s"},
                files={"file": ("big.csv", data, "text/csv")},
                timeout=60,
            )
            deadline = time.monotonic() + 20
            while not (published := s3util.objects(s3_settings) - before):
                assert time.monotonic() < deadline, "the object never appeared"
                time.sleep(0.05)
            checked = _run_check(s3_settings)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert published <= s3util.objects(s3_settings), "the check removed the object"
            resp = sending.result(timeout=60)
        assert resp.status_code == 201, resp.text
        file = resp.json()["file"]
        assert stored_bytes(s3_settings, file["filename"]) == data
    finally:
        server.stop()
