"""Resumable (tus) uploads on S3: one multipart upload per tus upload, parts aligned to the
5 MiB minimum, the acknowledged rest in a tail object, nothing on the instance's disk, one
writer at a time across instances, and expiry and termination that leave nothing.

Runs under ``make test-s3`` (SeaweedFS with authentication on, and PostgreSQL for the tests
with two instances); skipped elsewhere.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tusclient import client as tus_client

from csvstore.config import Settings
from csvstore.config_values import MiB
from csvstore.maintenance.reconcile import reconcile, startup_check
from csvstore.storage.local import STORE_MARKER
from csvstore.wiring import open_store
from tests import s3util
from tests.conftest import assert_consistent
from tests.serverproc import ServerProcess
from tests.test_tus import (
    KILL_ROUNDS,
    TUS,
    Sha256Uploader,
    V,
    _raw_patch_start,
    assert_problem,
    create,
    csv_file,
    delete_session_under_uploads,
    file_id_of,
    file_row,
    head,
    patch,
    path_of,
    single_shot,
    tus_upload,
    tus_upload_through_restarts,
    without_per_upload_fields,
)
from tests.tusproxy import DroppingProxy

PART = 5 * MiB  # the suite's S3 part size is S3's minimum, so tus parts are exactly that


def tus_objects(settings: Settings) -> list[str]:
    return sorted(name for name in s3util.objects(settings) if name.startswith("tus/"))


def record_of(settings: Settings, upload_id: str) -> dict[str, Any]:
    raw = s3util.read_object(settings, f"tus/{upload_id}.json")
    assert raw is not None
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


def no_local_partials(server: ServerProcess) -> bool:
    return not (server.data_dir / "tmp" / "tus").exists()


def content(url: str, file_id: str) -> bytes:
    resp = requests.get(f"{url}/api/csv/files/{file_id}/content", timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.content


def wait_for(predicate: object, what: str, seconds: float = 30.0) -> None:
    """Poll a condition (the sweeper runs in the server); fail with ``what`` if it never
    holds. Not a timing assertion: the deadline is only there to end a broken run."""
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.1)


@pytest.fixture
def server(s3_settings: Settings) -> Iterator[ServerProcess]:
    """One instance on the test's prefix (and database, under make test-s3)."""
    proc = ServerProcess(s3_settings.data_dir)
    proc.start()
    try:
        requests.post(f"{proc.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]
    assert "Traceback" not in proc.log(), proc.log()[-3000:]
    assert_consistent(s3_settings)


@pytest.fixture
def pair(s3_settings: Settings, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two instances sharing the bucket and the PostgreSQL database, each its own disk."""
    if not s3_settings.uses_postgres:
        pytest.skip("needs PostgreSQL and S3 (make test-s3)")
    a, b = ServerProcess(tmp_path / "a-data"), ServerProcess(tmp_path / "b-data")
    a.start()
    try:
        b.start()
        try:
            requests.post(f"{a.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
            yield a, b
        finally:
            assert b.stop() == 0, b.log()[-3000:]
    finally:
        assert a.stop() == 0, a.log()[-3000:]
    for proc in (a, b):
        assert "Traceback" not in proc.log(), proc.log()[-3000:]
        assert no_local_partials(proc)
    assert_consistent(s3_settings)


def test_tuspy_through_cuts_on_s3_equals_single_shot_with_nothing_on_local_disk(
    server: ServerProcess, s3_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "cut.csv"
    body = csv_file(path, 13 * MiB, seed=11)  # two whole parts and a last one
    # One PATCH for the whole file (tuspy's default), cut twice mid-body: each time the
    # server keeps what arrived, which straddles part boundaries.
    with DroppingProxy(server.port, [len(body) * 3 // 10, len(body) * 7 // 10]) as proxy:
        location = tus_upload(proxy.url, path, session_id="s1")
        assert proxy.cuts == 2
    done = head(server.url, path_of(location))
    assert done.headers["Upload-Offset"] == str(len(body))
    resumed = file_row(server.url, done.headers["Content-Location"].rsplit("/", 1)[1])
    single = file_row(server.url, single_shot(server.url, path, "s1")["id"])
    assert without_per_upload_fields(resumed) == without_per_upload_fields(single)
    assert resumed["row_count"] > 100_000
    assert content(server.url, resumed["id"]) == body
    # Published under the id its multipart upload was started with: no copy.
    upload_id = location.rsplit("/", 1)[1]
    assert resumed["id"] == str(uuid.UUID(hex=upload_id))
    assert no_local_partials(server)
    # Only the completed upload's record stays (until it expires): no tail, no part.
    assert tus_objects(s3_settings) == [f"tus/{upload_id}.json"]
    assert s3util.multipart_uploads(s3_settings) == []


def test_parts_are_aligned_and_the_rest_is_a_durable_tail(
    server: ServerProcess, s3_settings: Settings
) -> None:
    body = csv_file(Path("/dev/null"), 17 * MiB, seed=5)
    location = create(server.url, len(body)).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    name = f"{uuid.UUID(hex=upload_id)}.csv"
    offset = 0
    # PATCHes of sizes that never fall on a part boundary.
    for size in (3 * MiB + 17, 4 * MiB, 1, 5 * MiB - 5):
        resp = patch(server.url, location, offset, body[offset : offset + size])
        assert resp.status_code == 204, resp.text
        offset += size
        assert resp.headers["Upload-Offset"] == str(offset)
        whole = offset // PART
        assert s3util.part_sizes(s3_settings) == {name: [PART] * whole}
        # The rest is in the tail segments the record names, and nothing else is.
        segments = [f"tus/{t['Name']}" for t in record_of(s3_settings, upload_id)["tail"]]
        assert sorted(segments) == [n for n in tus_objects(s3_settings) if ".tail." in n]
        tail = b"".join(s3util.read_object(s3_settings, n) or b"" for n in segments)
        assert tail == body[whole * PART : offset]
        assert tail
    assert no_local_partials(server)
    # A PATCH at the wrong offset is a 409 naming the right one.
    wrong = patch(server.url, location, offset - 1, b"x")
    assert_problem(wrong, 409)
    assert wrong.headers["Upload-Offset"] == str(offset)
    done = patch(server.url, location, offset, body[offset:])
    assert done.status_code == 204, done.text
    assert content(server.url, file_id_of(done)) == body
    assert tus_objects(s3_settings) == [f"tus/{upload_id}.json"]


def test_termination_aborts_the_multipart_upload(
    server: ServerProcess, s3_settings: Settings
) -> None:
    body = csv_file(Path("/dev/null"), 7 * MiB, seed=4)
    location = create(server.url, len(body)).headers["Location"]
    assert patch(server.url, location, 0, body[: 6 * MiB]).status_code == 204
    assert s3util.multipart_uploads(s3_settings) != []
    assert len(tus_objects(s3_settings)) == 2  # the record and the tail
    resp = requests.delete(f"{server.url}{location}", headers=V, timeout=30)
    assert resp.status_code == 204
    assert head(server.url, location).status_code == 404
    assert s3util.multipart_uploads(s3_settings) == []
    assert tus_objects(s3_settings) == []
    assert_problem(requests.delete(f"{server.url}{location}", headers=V, timeout=30), 404)


def test_deleting_a_session_terminates_its_uploads_on_s3(
    server: ServerProcess, s3_settings: Settings
) -> None:
    """Deleting a session left its tus uploads in the bucket -- record, tail segments, the
    multipart upload and its parts -- until their expiry (24 h), answering HEAD with 200.
    The PATCH in flight cuts no part, so holds no lease: the delete removes its upload too,
    and the PATCH answers 404, its segment removed."""
    body = csv_file(Path("/dev/null"), 12 * MiB, seed=15)  # a part and a tail in each
    delete_session_under_uploads(server.url, server.port, "s1", body, in_flight=b"HTTP/1.1 404")
    assert s3util.multipart_uploads(s3_settings) == []
    assert tus_objects(s3_settings) == []


def test_expiry_aborts_the_multipart_upload(s3_settings: Settings, tmp_path: Path) -> None:
    server = ServerProcess(s3_settings.data_dir, "--tus-expiry", "1.5", "--sweep-interval", "0.2")
    server.start()
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        body = csv_file(tmp_path / "e.csv", 6 * MiB, seed=6)
        location = create(server.url, len(body)).headers["Location"]
        assert patch(server.url, location, 0, body[: 5 * MiB + 10]).status_code == 204
        wait_for(lambda: head(server.url, location).status_code == 404, "the upload expired")
        wait_for(
            lambda: s3util.multipart_uploads(s3_settings) == [] and not tus_objects(s3_settings),
            "the sweeper aborted the multipart upload and removed record and tail",
        )
        assert_problem(patch(server.url, location, 5 * MiB + 10, body[5 * MiB + 10 :]), 404)
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log()
    assert_consistent(s3_settings)


def _slow_form_upload(port: int, body: bytes, pause_at: int, pause: float) -> bytes:
    """A single-shot upload whose body stalls ``pause`` seconds at ``pause_at``; the answer."""
    boundary = "slowformboundary"
    head_part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="session_id"\r\n\r\ns1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="slow.csv"\r\nContent-Type: text/csv\r\n\r\n'
    ).encode()
    form = head_part + body + f"\r\n--{boundary}--\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            (
                f"POST /api/csv/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(form)}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
        )
        sock.sendall(form[:pause_at])
        time.sleep(pause)
        sock.sendall(form[pause_at:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_the_tus_sweeper_spares_a_slow_single_shot_upload(
    s3_settings: Settings,
) -> None:
    """A single-shot upload streams into a multipart upload of a stored name with no tus
    record; the tus sweeper took it for a tus upload's orphan once it was older than the
    tus expiry and aborted it, and the upload's commit answered 500."""
    server = ServerProcess(s3_settings.data_dir, "--tus-expiry", "1", "--sweep-interval", "0.2")
    server.start()
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        body = csv_file(Path("/dev/null"), 7 * MiB, seed=14)
        # Past one part (the multipart upload is started), then a pause of several sweeps.
        answer = _slow_form_upload(server.port, body, 6 * MiB, pause=3.0)
        assert answer.startswith(b"HTTP/1.1 201"), answer[:2000]
        file_id = json.loads(answer.split(b"\r\n\r\n", 1)[1])["file"]["id"]
        assert content(server.url, file_id) == body
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()[-3000:]
    assert_consistent(s3_settings)


def test_start_on_one_instance_resume_on_another(
    pair: tuple[ServerProcess, ServerProcess], s3_settings: Settings, tmp_path: Path
) -> None:
    a, b = pair
    path = tmp_path / "moved.csv"
    body = csv_file(path, 12 * MiB, seed=8)
    # tuspy on instance A, its connection cut for good once 7 MiB are through...
    with DroppingProxy(a.port, [7 * MiB]) as proxy, path.open("rb") as stream:
        uploader = Sha256Uploader(
            file_stream=stream,
            client=tus_client.TusClient(f"{proxy.url}{TUS}"),
            chunk_size=1 << 62,
            metadata={"session_id": "s1", "filename": "moved.csv"},
            retries=0,
        )
        with pytest.raises(Exception):  # noqa: B017,PT011  tuspy's error for a cut is its own
            uploader.upload()
        location = path_of(str(uploader.url))
    kept = int(head(b.url, location).headers["Upload-Offset"])
    assert PART < kept <= 7 * MiB  # what arrived before the cut was kept, on S3
    # ... and resumed by a new tuspy client on instance B, from the offset B reports.
    with path.open("rb") as stream:
        resumer = Sha256Uploader(
            file_stream=stream,
            client=tus_client.TusClient(f"{b.url}{TUS}"),
            url=f"{b.url}{location}",
            chunk_size=1 << 62,
            metadata={"session_id": "s1", "filename": "moved.csv"},
        )
        resumer.upload()
    done = head(a.url, location)
    file_id = done.headers["Content-Location"].rsplit("/", 1)[1]
    assert content(a.url, file_id) == body
    # B had none of the analysis A fed: it read the object back from S3.
    assert "bytes re-read and analysed" in b.log()
    single = file_row(b.url, single_shot(b.url, path, "s1")["id"])
    assert without_per_upload_fields(file_row(a.url, file_id)) == without_per_upload_fields(single)


def test_concurrent_patches_across_instances_one_wins(
    pair: tuple[ServerProcess, ServerProcess], s3_settings: Settings
) -> None:
    a, b = pair
    body = csv_file(Path("/dev/null"), 8 * MiB, seed=9)
    location = create(a.url, len(body)).headers["Location"]
    record = f"tus/{location.rsplit('/', 1)[1]}.json"
    # A PATCH in flight on A: more than a part sent (the part takes the lease), the rest held.
    first = _raw_patch_start(a.port, location, 0, len(body), body[: 7 * MiB])
    try:
        wait_for(
            lambda: json.loads(s3util.read_object(s3_settings, record) or b"{}")["owner"],
            "A holds the upload's lease",
        )
        held = patch(b.url, location, 0, body[:1000])
        assert_problem(held, 423)
        assert 1 <= int(held.headers["Retry-After"]) <= 30  # the lease's time left
        assert_problem(patch(a.url, location, 0, body[:1000]), 423)  # the same instance too
        assert_problem(requests.delete(f"{b.url}{location}", headers=V, timeout=30), 423)
        first.sendall(body[7 * MiB :])
        answer = b""
        while b"\r\n\r\n" not in answer:
            received = first.recv(65536)
            assert received, answer
            answer += received
    finally:
        first.close()
    assert answer.startswith(b"HTTP/1.1 204"), answer
    done = head(b.url, location)
    file_id = done.headers["Content-Location"].rsplit("/", 1)[1]
    assert content(b.url, file_id) == body
    assert_problem(patch(b.url, location, 0, body[:1000]), 409)  # complete: no more bytes


def test_refused_when_read_back_leaves_nothing(
    pair: tuple[ServerProcess, ServerProcess], s3_settings: Settings
) -> None:
    """Half sent to A, the rest to B, which has no analysis and reads the completed object
    back from S3: it breaks the ``sha256`` expectation, so 400, and neither that object nor
    anything of the upload remains."""
    a, b = pair
    body = csv_file(Path("/dev/null"), 6 * MiB, seed=2)
    location = create(a.url, len(body), sha256="0" * 64).headers["Location"]
    assert patch(a.url, location, 0, body[: 3 * MiB]).status_code == 204
    assert_problem(patch(b.url, location, 3 * MiB, body[3 * MiB :]), 400)
    assert head(a.url, location).status_code == 404
    assert tus_objects(s3_settings) == []
    assert s3util.objects(s3_settings) - {STORE_MARKER} == set()
    assert s3util.multipart_uploads(s3_settings) == []


def test_a_killed_instance_leaves_a_resumable_upload(s3_settings: Settings) -> None:
    """SIGKILL mid-PATCH: the bytes acknowledged before stay, the ones in flight do not
    count, and once the dead process's lease (taken to send a part) runs out (2 s here) the
    upload resumes."""
    server = ServerProcess(s3_settings.data_dir, "--tus-lease", "2")
    server.start()
    body = csv_file(Path("/dev/null"), 9 * MiB, seed=12)
    acked = MiB + 100
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        location = create(server.url, len(body)).headers["Location"]
        record = f"tus/{location.rsplit('/', 1)[1]}.json"
        assert patch(server.url, location, 0, body[:acked]).status_code == 204
        sock = _raw_patch_start(
            server.port, location, acked, len(body) - acked, body[acked : acked + 5 * MiB]
        )
        wait_for(
            lambda: json.loads(s3util.read_object(s3_settings, record) or b"{}")["owner"],
            "the PATCH holds the lease",
        )
        server.kill()
        sock.close()
        server.start()
        assert head(server.url, location).headers["Upload-Offset"] == str(acked)
        answers: list[requests.Response] = []

        def resumed() -> bool:
            answers.append(patch(server.url, location, acked, body[acked:]))
            return answers[-1].status_code != 423  # the dead process's lease, until it lapses

        wait_for(resumed, "the upload could be resumed")
        # Each 423 said how long the dead process's lease had left (2 s at most).
        assert all(1 <= int(a.headers["Retry-After"]) <= 2 for a in answers if a.status_code == 423)
        assert answers[-1].status_code == 204, answers[-1].text
        assert content(server.url, file_id_of(answers[-1])) == body
        assert "bytes re-read and analysed" in server.log()
        assert no_local_partials(server)
    finally:
        assert server.stop() == 0
    assert_consistent(s3_settings)


async def test_the_check_settles_partial_uploads_on_s3(s3_settings: Settings) -> None:
    server = ServerProcess(s3_settings.data_dir)
    server.start()
    body = csv_file(Path("/dev/null"), 6 * MiB, seed=13)
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        ids = {}
        for name in ("live", "expired", "tailless"):
            location = create(server.url, len(body)).headers["Location"]
            assert patch(server.url, location, 0, body[: 5 * MiB + 7]).status_code == 204
            ids[name] = location.rsplit("/", 1)[1]
        done = create(server.url, 8)
        assert patch(server.url, done.headers["Location"], 0, b"a,b\n1,2\n").status_code == 204
        ids["published"] = done.headers["Location"].rsplit("/", 1)[1]
        gone = create(server.url, 8)
        assert patch(server.url, gone.headers["Location"], 0, b"a,b\n3,4\n").status_code == 204
        ids["unrecorded"] = gone.headers["Location"].rsplit("/", 1)[1]
        unrecorded_file = file_id_of(head(server.url, gone.headers["Location"]))
        requests.delete(f"{server.url}/api/csv/files/{unrecorded_file}", timeout=30)
    finally:
        assert server.stop() == 0

    def record(upload_id: str) -> dict[str, Any]:
        return record_of(s3_settings, upload_id)

    expired = record(ids["expired"])
    expired["state"] = {**expired["state"], "expires_at": time.time() - 1}
    s3util.put_object(s3_settings, f"tus/{ids['expired']}.json", json.dumps(expired).encode())
    s3util.delete_object(s3_settings, f"tus/{record(ids['tailless'])['tail'][0]['Name']}")
    # Published, then the process died before it recorded so: its last bytes were never
    # acknowledged (all 8 were sent in the one PATCH), its object was made.
    published = record(ids["published"])
    published["state"] = {**published["state"], "completed": False, "offset": 0}
    assert published["object_done"] is True
    s3util.put_object(s3_settings, f"tus/{ids['published']}.json", json.dumps(published).encode())
    # A completion that died after completing its multipart upload into the object, before
    # it recorded the file id it would publish under (so before any row).
    unrecorded = record(ids["unrecorded"])
    unrecorded["state"] = {**unrecorded["state"], "completed": False, "offset": 0, "file_id": None}
    s3util.put_object(s3_settings, f"tus/{ids['unrecorded']}.json", json.dumps(unrecorded).encode())
    s3util.put_object(s3_settings, f"{unrecorded_file}.csv", b"a,b\n3,4\n")
    unreadable = uuid.uuid4().hex
    s3util.put_object(s3_settings, f"tus/{unreadable}.json", b"{not json")
    stray = f"tus/{ids['live']}.tail.9-9.deadbeef"
    s3util.put_object(s3_settings, stray, b"a writer that died")

    # A shared store's start-up check spares young partial uploads (another instance's).
    async with open_store(s3_settings) as store:
        assert (await startup_check(store)).partial_uploads_removed == 0
    assert len(s3util.multipart_uploads(s3_settings)) == 3
    # Once old enough (here: at once): the expired one, the one missing acknowledged
    # bytes and the unreadable one go; the live one stays, multipart upload and all.
    async with open_store(s3_settings) as store:
        report = await reconcile(store)
    assert report.partial_uploads_removed == 3
    # The unrecorded one's object is no orphan: its upload's next request publishes it.
    assert report.orphan_files_removed == 0
    assert f"{unrecorded_file}.csv" in s3util.objects(s3_settings)
    assert report.temp_files_removed == 0
    live_upload = f"{uuid.UUID(hex=ids['live'])}.csv"
    assert s3util.multipart_uploads(s3_settings) == [live_upload]
    assert record(ids["published"])["state"]["completed"] is True
    left = tus_objects(s3_settings)
    assert f"tus/{unreadable}.json" not in left
    assert f"tus/{ids['expired']}.json" not in left
    assert f"tus/{ids['tailless']}.json" not in left
    assert f"tus/{ids['unrecorded']}.json" in left

    server.start()
    try:
        location = f"{TUS}{ids['live']}"
        assert head(server.url, location).headers["Upload-Offset"] == str(5 * MiB + 7)
        finished = patch(server.url, location, 5 * MiB + 7, body[5 * MiB + 7 :])
        assert finished.status_code == 204, finished.text
        assert content(server.url, file_id_of(finished)) == body
        # The client of the unrecorded one sends its last bytes again: the file is
        # published from the object, and the answer is that of a complete upload.
        again = patch(server.url, f"{TUS}{ids['unrecorded']}", 0, b"a,b\n3,4\n")
        assert_problem(again, 409)
        assert again.headers["Upload-Offset"] == "8"
        assert file_id_of(again) == unrecorded_file
        assert content(server.url, unrecorded_file) == b"a,b\n3,4\n"
        marked = head(server.url, f"{TUS}{ids['published']}")
        assert marked.headers["Upload-Offset"] == "8"
        assert marked.headers["Content-Location"].endswith(str(uuid.UUID(hex=ids["published"])))
    finally:
        assert server.stop() == 0
    assert stray not in tus_objects(s3_settings)
    assert_consistent(s3_settings)


def parts_sent(settings: Settings) -> int:
    return sum(sum(sizes) for sizes in s3util.part_sizes(settings).values())


def test_tuspy_uploads_in_flight_on_s3_survive_sigkills(
    s3_settings: Settings, tmp_path: Path
) -> None:
    """The kill test on S3: tuspy clients keep uploading while the server is SIGKILLed and
    restarted under them; every upload completes byte-identical, and afterwards the bucket
    holds exactly the files the database lists, with no multipart upload or segment left."""
    server = ServerProcess(s3_settings.data_dir, "--tus-lease", "2")
    server.start()
    requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "k"}, timeout=30)
    rng = random.Random(20261128)
    files = []
    for n in range(3):
        path = tmp_path / f"k{n}.csv"
        files.append((path, csv_file(path, rng.randrange(12, 18) * MiB, seed=n)))
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def upload(n: int, path: Path) -> None:
        try:
            results[n] = tus_upload_through_restarts(
                server.url,
                path,
                session_id="k",
                chunk_size=MiB,
                checksum=n % 2 == 1,
                retries=100,  # 0.2 s apart: past a restart and a lapsing lease
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(n, path)) for n, (path, _) in enumerate(files)]
    try:
        for thread in threads:
            thread.start()
        kills = 0
        for _ in range(KILL_ROUNDS):
            # Kill once bytes are arriving (the parts in the bucket change), then a little
            # later: mid-request more often than not.
            before = parts_sent(s3_settings)
            wait_for(
                lambda b=before: parts_sent(s3_settings) != b or len(results) == len(files),
                "uploads in flight",
            )
            if len(results) == len(files):
                break  # all done already (make stress asks for many rounds)
            time.sleep(rng.uniform(0.2, 1.0))
            server.kill()
            kills += 1
            time.sleep(0.3)
            server.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors
        assert kills > 0
        assert sorted(results) == list(range(len(files)))
        for n, (_, body) in enumerate(files):
            probe = head(server.url, path_of(results[n]))
            assert probe.headers["Upload-Offset"] == str(len(body))
            assert content(server.url, probe.headers["Content-Location"].rsplit("/", 1)[1]) == body
        assert no_local_partials(server)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-3000:]
    assert_consistent(s3_settings)
