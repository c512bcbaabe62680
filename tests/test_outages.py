"""The database or the storage goes away under a running server: requests get 503 with
``Retry-After`` and a problem body naming the dependency, ``/readyz`` says which one within
its deadline, and both recover when it comes back.

Each test stops and restarts a PostgreSQL server (scripts/pg-test-cluster) or a SeaweedFS
(scripts/s3-test-server) of its own, so the suite's shared servers are left alone. They run
under ``make test-postgres`` / ``make test-s3``, where those servers can be started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests

from csvstore.config import Settings
from tests import s3util
from tests.conftest import run_async, stored_state
from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 2.0


def _script(*args: str, **env: str) -> str:
    done = subprocess.run(
        [str(ROOT / "scripts" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
        check=True,
    )
    return done.stdout


def assert_unavailable(reply: requests.Response, dependency: str) -> dict[str, Any]:
    assert reply.status_code == 503, reply.text
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert int(reply.headers["Retry-After"]) >= 1
    body: dict[str, Any] = reply.json()
    assert body["status"] == 503
    assert body["dependency"] == dependency
    assert dependency in body["detail"]
    return body


def readyz_within_deadline(url: str) -> requests.Response:
    started = time.monotonic()
    reply = requests.get(f"{url}/readyz", timeout=30)
    assert time.monotonic() - started < READY_TIMEOUT + 1.5
    return reply


def wait_ready(url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply = requests.get(f"{url}/readyz", timeout=30)
        if reply.status_code == 200:
            body: dict[str, Any] = reply.json()
            return body
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.2)


def upload(url: str, name: str) -> requests.Response:
    return requests.post(
        f"{url}/api/csv/upload",
        files={"file": (name, b"a,b\n1,2\n")},
        data={"session_id": "s"},
        timeout=60,
    )


def _process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in _process_tree(int(child)))]


@pytest.fixture
def own_postgres(pg_server_url: str) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL server of this test's own: (URL, cluster folder)."""
    # Not under pytest's tmp_path: the postgres user must reach the folder (as in the Makefile).
    parent = Path(tempfile.mkdtemp(prefix="csvstore-outage-"))
    parent.chmod(0o755)
    folder = parent / "pg"
    try:
        url = _script("pg-test-cluster", "start", str(folder), "--fast").strip()
        try:
            yield url, folder
        finally:
            _script("pg-test-cluster", "stop", str(folder))
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _pg_ctl(folder: Path, *args: str) -> None:
    bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    command = [str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), *args]
    if os.getuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def test_postgres_stopped_and_hung_is_503_and_readyz_says_so(
    own_postgres: tuple[str, Path], tmp_path: Path
) -> None:
    url, folder = own_postgres
    server = ServerProcess(
        tmp_path / "data",
        "--ready-timeout",
        str(READY_TIMEOUT),
        env={"CSVSTORE_DATABASE_URL": url, "CSVSTORE_STORAGE": ""},
    )
    server.start()
    try:
        assert requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s"}).ok
        assert upload(server.url, "before.csv").status_code == 201

        _pg_ctl(folder, "-m", "fast", "-w", "stop")
        assert_unavailable(requests.get(f"{server.url}/api/csv/sessions/s"), "database")
        assert_unavailable(
            requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "t"}), "database"
        )
        assert_unavailable(upload(server.url, "during.csv"), "database")
        reply = readyz_within_deadline(server.url)
        body = assert_unavailable_readyz(reply)
        assert body["checks"]["database"] == "failing"
        assert body["checks"]["storage"] == "ok"

        port = (folder / "port").read_text().strip()
        _pg_ctl(folder, "-l", str(folder / "server.log"), "-o", f"-p {port}", "-w", "start")
        assert wait_ready(server.url)["checks"]["database"] == "ok"
        assert upload(server.url, "after.csv").status_code == 201

        # Hung: every PostgreSQL process stopped, connections open and never answered.
        postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
        hung = _process_tree(postmaster)
        for pid in hung:
            os.kill(pid, signal.SIGSTOP)
        try:
            body = assert_unavailable_readyz(readyz_within_deadline(server.url))
            assert body["checks"]["database"] == f"no answer within {READY_TIMEOUT:g} s"
        finally:
            for pid in hung:
                os.kill(pid, signal.SIGCONT)
        assert wait_ready(server.url)["checks"]["database"] == "ok"
        names = [
            f["original_filename"]
            for f in requests.get(f"{server.url}/api/csv/sessions/s").json()["csv_files"]
        ]
        assert sorted(names) == ["after.csv", "before.csv"]
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()[-3000:]


def assert_unavailable_readyz(reply: requests.Response) -> dict[str, Any]:
    assert reply.status_code == 503, reply.text
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert int(reply.headers["Retry-After"]) >= 1
    body: dict[str, Any] = reply.json()
    assert body["detail"].startswith("not ready: ")
    return body


TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
TUS_PATCH_HEADERS = {**TUS_HEADERS, "Content-Type": "application/offset+octet-stream"}
TUS_BODY = b"id,name\n" + b"".join(b"%d,name %d\n" % (i, i) for i in range(20_000))
TUS_HALF = len(TUS_BODY) // 2


def _half_sent_tus_upload(server: ServerProcess) -> str:
    """A tus upload into a new session "s" with its first half sent: its URL."""
    assert requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s"}).ok
    created = requests.post(
        f"{server.url}/api/csv/tus/",
        headers={
            **TUS_HEADERS,
            "Upload-Length": str(len(TUS_BODY)),
            "Upload-Metadata": "session_id cw==,filename ZC5jc3Y=",  # "s", "d.csv"
        },
    )
    assert created.status_code == 201, created.text
    location = f"{server.url}{created.headers['Location']}"
    first = _patch_tus(location, 0)
    assert first.status_code == 204, first.text
    return location


def _patch_tus(location: str, offset: int) -> requests.Response:
    end = TUS_HALF if offset == 0 else len(TUS_BODY)
    return requests.patch(
        location,
        data=TUS_BODY[offset:end],
        headers={**TUS_PATCH_HEADERS, "Upload-Offset": str(offset)},
        timeout=180,
    )


def _resumes_where_it_was_told(
    server: ServerProcess, location: str, answers: tuple[int, ...] = (204,)
) -> None:
    """HEAD gives the offset the client was last told, and the resend completes the file
    (after waiting out the lease of the request the outage cut: 423 with Retry-After)."""
    wait_ready(server.url, timeout=90)
    head = requests.head(location, headers=TUS_HEADERS)
    assert head.status_code == 200, head.status_code
    assert int(head.headers["Upload-Offset"]) == TUS_HALF
    deadline = time.monotonic() + 90
    while (again := _patch_tus(location, TUS_HALF)).status_code == 423:
        assert time.monotonic() < deadline, again.text
        time.sleep(float(again.headers["Retry-After"]))
    assert again.status_code in answers, again.text
    stored = requests.get(f"{server.url}{again.headers['Content-Location']}/content")
    assert stored.content == TUS_BODY


def _wait_until_held(server: ServerProcess) -> None:
    """Until the server is held at its CSVSTORE_PAUSE_AT point: it answers nothing then,
    not even /healthz."""
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(f"{server.url}/healthz", timeout=0.5)
        except requests.Timeout:
            return
        assert time.monotonic() < deadline, "the server was never held"
        time.sleep(0.05)


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_tus_upload_whose_completion_meets_a_stopped_database_stays_resumable(
    own_postgres: tuple[str, Path], tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    """The last PATCH of a tus upload reaches its completion, and PostgreSQL stops there.
    The client gets a 503 after the publish has waited for it; the upload is not removed
    (it was, with every acknowledged byte): once the database is back, HEAD gives the
    offset the client was last told and the resend completes the file."""
    url, folder = own_postgres
    # On S3 the bucket of make test-s3 (its variables are in the environment), a prefix of
    # this test's own.
    bucket = request.getfixturevalue("s3_settings").storage if storage == "s3" else ""
    data_dir = tmp_path / "data"
    server = ServerProcess(
        data_dir,
        env={
            "CSVSTORE_DATABASE_URL": url,
            "CSVSTORE_STORAGE": f"{bucket}/tus-db-outage" if bucket else "",
            "CSVSTORE_PAUSE_AT": "tus.publishing_saved:3",
        },
    )
    server.start()
    try:
        location = _half_sent_tus_upload(server)
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(_patch_tus, location, TUS_HALF)
            _wait_until_held(server)
            _pg_ctl(folder, "-m", "fast", "-w", "stop")  # while the server is held there
            assert_unavailable(sending.result(timeout=180), "database")
        port = (folder / "port").read_text().strip()
        _pg_ctl(folder, "-l", str(folder / "server.log"), "-o", f"-p {port}", "-w", "start")
        _resumes_where_it_was_told(server, location)
    finally:
        assert server.stop() == 0, server.log()


def test_a_tus_upload_completed_on_another_instance_survives_a_stopped_database(
    own_postgres: tuple[str, Path], tmp_path: Path, s3_settings: Settings
) -> None:
    """As above, but the first half went through instance A and the last PATCH through B,
    which completes the object to read it back before the publish meets the stopped
    database. The 503 must not delete that object: the record says it is made, so the
    resend would find no bytes and the upload, every acknowledged byte, would go."""
    if not s3_settings.uses_s3:
        pytest.skip("needs S3 (make test-s3)")
    url, folder = own_postgres
    env = {"CSVSTORE_DATABASE_URL": url, "CSVSTORE_STORAGE": f"{s3_settings.storage}/tus-b"}
    first = ServerProcess(tmp_path / "a-data", env=env)
    first.start()
    try:
        location = _half_sent_tus_upload(first)
    finally:
        assert first.stop() == 0, first.log()
    server = ServerProcess(
        tmp_path / "b-data", env={**env, "CSVSTORE_PAUSE_AT": "tus.publishing_saved:3"}
    )
    server.start()
    location = location.replace(first.url, server.url)
    try:
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(_patch_tus, location, TUS_HALF)
            _wait_until_held(server)
            _pg_ctl(folder, "-m", "fast", "-w", "stop")
            assert_unavailable(sending.result(timeout=180), "database")
        port = (folder / "port").read_text().strip()
        _pg_ctl(folder, "-l", str(folder / "server.log"), "-o", f"-p {port}", "-w", "start")
        # Published from the object B made: tus's answer to a complete upload, its file named.
        _resumes_where_it_was_told(server, location, (204, 409))
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_a_publish_that_cannot_read_its_row_back_leaves_nothing_once_the_database_returns(
    own_postgres: tuple[str, Path], tmp_path: Path, s3_settings: Settings
) -> None:
    """PostgreSQL stops between an upload's bytes and its row, for longer than the publish
    waits (its insert, then reading the row back): 503, the bytes and intent left. They were
    left for good: the check spares an intent whose owner lives, so the object of an upload
    never acknowledged stayed as long as the server ran. Once the database answers, the
    server reads the row and, finding none, removes both."""
    if not s3_settings.uses_s3:
        pytest.skip("needs S3 (make test-s3)")
    url, folder = own_postgres
    settings = replace(s3_settings, storage=f"{s3_settings.storage}/publish-b", database_url=url)
    env = {"CSVSTORE_DATABASE_URL": url, "CSVSTORE_STORAGE": settings.storage}
    server = ServerProcess(
        tmp_path / "data", env={**env, "CSVSTORE_PAUSE_AT": "publish.bytes_published:3"}
    )
    server.start()
    try:
        assert requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s"}).ok
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(upload, server.url, "cut.csv")
            _wait_until_held(server)
            _pg_ctl(folder, "-m", "fast", "-w", "stop")
            assert_unavailable(sending.result(timeout=180), "database")
        assert len(_csv_objects(settings)) == 1  # the object, not its row
        port = (folder / "port").read_text().strip()
        _pg_ctl(folder, "-l", str(folder / "server.log"), "-o", f"-p {port}", "-w", "start")
        wait_ready(server.url, timeout=90)
        deadline = time.monotonic() + 30
        while _csv_objects(settings):
            assert time.monotonic() < deadline, _csv_objects(settings)
            time.sleep(0.5)
        assert stored_state(settings)[1] == set()
        assert run_async(_intents(url)) == 0
    finally:
        assert server.stop() == 0, server.log()


def _csv_objects(settings: Settings) -> set[str]:
    return {name for name in s3util.objects(settings) if name.endswith(".csv")}


async def _intents(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM upload_intents"))
    finally:
        await conn.close()


@pytest.fixture
def own_seaweedfs(s3_settings: object, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A SeaweedFS of this test's own: its S3 variables, and WEED_DIR."""
    folder = tmp_path / "s3"
    python = str(ROOT / ".venv" / "bin" / "python")
    lines = _script("s3-test-server", "start", str(folder), PY=python).split()
    found = dict(line.split("=", 1) for line in lines)
    try:
        yield {**found, "WEED_DIR": str(folder)}
    finally:
        _script("s3-test-server", "stop", str(folder))


def _stop_weed(folder: Path) -> tuple[list[str], dict[str, str]]:
    """SIGTERM SeaweedFS and wait; its command line and environment, to start it again."""
    pid = int((folder / "pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    environ = dict(
        entry.split("=", 1)
        for entry in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
        if "=" in entry
    )
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    return argv, environ


def test_seaweedfs_stopped_and_hung_is_503_and_readyz_says_so(
    own_seaweedfs: dict[str, str], tmp_path: Path
) -> None:
    s3 = own_seaweedfs
    folder = Path(s3["WEED_DIR"])
    server = ServerProcess(
        tmp_path / "data",
        "--ready-timeout",
        str(READY_TIMEOUT),
        env={
            "CSVSTORE_DATABASE_URL": "",
            "CSVSTORE_STORAGE": f"s3://{s3['S3_BUCKET']}/outage",
            "CSVSTORE_S3_ENDPOINT_URL": s3["S3_ENDPOINT_URL"],
            "AWS_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"],
        },
    )
    server.start()
    weed: subprocess.Popen[bytes] | None = None
    try:
        assert requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s"}).ok
        stored = upload(server.url, "before.csv")
        assert stored.status_code == 201
        content = f"{server.url}/api/csv/files/{stored.json()['file']['id']}/content"

        argv, environ = _stop_weed(folder)
        assert_unavailable(upload(server.url, "during.csv"), "storage")
        assert_unavailable(requests.get(content, timeout=60), "storage")
        # The database is not the storage: what needs only the database still works.
        assert requests.get(f"{server.url}/api/csv/sessions/s").status_code == 200
        body = assert_unavailable_readyz(readyz_within_deadline(server.url))
        assert body["checks"]["storage"] != "ok"
        assert body["checks"]["database"] == "ok"

        log = (folder / "weed-restarted.log").open("wb")
        weed = subprocess.Popen(
            argv, env=environ, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        (folder / "pid").write_text(str(weed.pid))  # for the fixture's stop
        assert wait_ready(server.url, timeout=90)["checks"]["storage"] == "ok"
        assert requests.get(content, timeout=60).content == b"a,b\n1,2\n"

        for pid in _process_tree(weed.pid):
            os.kill(pid, signal.SIGSTOP)
        try:
            body = assert_unavailable_readyz(readyz_within_deadline(server.url))
            assert body["checks"]["storage"] == f"no answer within {READY_TIMEOUT:g} s"
        finally:
            for pid in _process_tree(weed.pid):
                os.kill(pid, signal.SIGCONT)
        assert wait_ready(server.url, timeout=90)["checks"]["storage"] == "ok"
        assert upload(server.url, "after.csv").status_code == 201
    finally:
        assert server.stop() == 0, server.log()
        if weed is not None:
            weed.terminate()
            try:
                weed.wait(timeout=30)
            except subprocess.TimeoutExpired:
                weed.kill()
                weed.wait()
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_a_tus_upload_whose_completion_meets_a_stopped_seaweedfs_stays_resumable(
    own_seaweedfs: dict[str, str], tmp_path: Path
) -> None:
    """As with the database: SeaweedFS stops while a tus upload completes (the server held
    just before it stores the object). The client gets a 503; the upload is not removed:
    once the storage is back, HEAD gives the offset the client was last told and the
    resend completes the file."""
    s3 = own_seaweedfs
    folder = Path(s3["WEED_DIR"])
    server = ServerProcess(
        tmp_path / "data",
        env={
            "CSVSTORE_DATABASE_URL": "",
            "CSVSTORE_STORAGE": f"s3://{s3['S3_BUCKET']}/tus-outage",
            "CSVSTORE_S3_ENDPOINT_URL": s3["S3_ENDPOINT_URL"],
            "AWS_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"],
            "CSVSTORE_PAUSE_AT": "tus.publishing_saved:4",
        },
    )
    server.start()
    weed: subprocess.Popen[bytes] | None = None
    try:
        location = _half_sent_tus_upload(server)
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(_patch_tus, location, TUS_HALF)
            _wait_until_held(server)
            argv, environ = _stop_weed(folder)
            assert_unavailable(sending.result(timeout=180), "storage")
        log = (folder / "weed-restarted.log").open("wb")
        weed = subprocess.Popen(
            argv, env=environ, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        (folder / "pid").write_text(str(weed.pid))  # for the fixture's stop
        _resumes_where_it_was_told(server, location)
    finally:
        assert server.stop() == 0, server.log()
        if weed is not None:
            weed.terminate()
            try:
                weed.wait(timeout=30)
            except subprocess.TimeoutExpired:
                weed.kill()
                weed.wait()
