"""Nothing lost at scale: PostgreSQL restarted again and again, SeaweedFS stopped and started,
under a real server taking uploads (multipart, small and 2 MB, and tus), deletes and session
creations.

Afterwards every acknowledged upload is listed and byte-identical (through the API and in the
bucket), the bucket holds exactly the objects the database lists, ``csvstore check`` has
nothing to remove or repair, and every request that failed was a 503 with ``Retry-After``.

It starts its own PostgreSQL (fsync on: an immediate restart is a crash the WAL must cover)
and SeaweedFS (authentication on) through scripts/pg-test-cluster and scripts/s3-test-server,
and runs under ``make stress`` (CSVSTORE_FAULTS=1); elsewhere it is skipped.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from csvstore.config import Settings
from tests import s3util
from tests.conftest import stored_state
from tests.serverproc import ServerProcess
from tests.test_outages import _pg_ctl, _script, _stop_weed, wait_ready
from tests.test_tus import TUS, V, metadata

pytestmark = pytest.mark.skipif(
    os.environ.get("CSVSTORE_FAULTS") != "1",
    reason="make stress runs it (CSVSTORE_FAULTS=1): its own PostgreSQL and SeaweedFS",
)

SEED = int(os.environ.get("CSVSTORE_FAULTS_SEED", "20261206"))
# (kind, mode): PostgreSQL restarts, fast and immediate, and SeaweedFS stopped and started.
SCHEDULE = [
    ("pg", "fast"),
    ("pg", "immediate"),
    ("pg", "fast"),
    ("s3", ""),
    ("pg", "immediate"),
    ("pg", "fast"),
    ("pg", "immediate"),
    ("s3", ""),
    ("pg", "fast"),
    ("pg", "immediate"),
]
FORM_WORKERS = 5
TUS_WORKERS = 2
MAX_OPS_PER_WORKER = 2000  # a bound; the schedule's end stops the load long before
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Answer:
    op: str
    status: int  # 0: no HTTP answer (connection error)
    retry_after: str | None
    problem: bool
    detail: str


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[Answer] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)  # acknowledged
    acked: dict[str, bytes] = field(default_factory=dict)  # file id -> the bytes sent
    maybe_deleted: set[str] = field(default_factory=set)  # a delete sent, not acknowledged
    deleted: set[str] = field(default_factory=set)  # acknowledged deletes
    tus_lost: list[str] = field(default_factory=list)  # uploads a 503 left unresumable
    tus_given_up: list[str] = field(default_factory=list)  # not complete within their time
    tus_done: int = 0
    tus_complete_409: int = 0  # 409 "complete" (with Content-Location) after a failure

    def record(self, op: str, reply: requests.Response | None) -> None:
        if reply is None:
            self.answers.append(Answer(op, 0, None, False, "connection error"))
            return
        self.answers.append(
            Answer(
                op,
                reply.status_code,
                reply.headers.get("Retry-After"),
                reply.headers.get("Content-Type", "").startswith("application/problem+json"),
                reply.text[:300] if reply.status_code >= 400 else "",
            )
        )


def _csv(rng: random.Random, size: int) -> bytes:
    salt = rng.randrange(1 << 40)
    line_count = max(1, size // 24)
    lines = [b"id,value,note"] + [f"{i},{salt + i},row{i:08d}".encode() for i in range(line_count)]
    return b"\n".join(lines) + b"\n"


def _call(ledger: Ledger, op: str, method: str, url: str, **kwargs: object) -> requests.Response:
    """One request, its answer recorded; None-free: a connection error is re-raised."""
    try:
        reply = requests.request(method, url, timeout=60, **kwargs)  # type: ignore[arg-type]
    except requests.RequestException:
        ledger.record(op, None)
        raise
    ledger.record(op, reply)
    return reply


def _pause(reply: requests.Response | None) -> None:
    wait = float(reply.headers.get("Retry-After", "1")) if reply is not None else 1.0
    if reply is None or reply.status_code != 423:
        wait = min(wait, 2.0)  # shortened: the test's own outages last seconds
    time.sleep(min(wait, 30.0))  # a held lease (423) is waited out as the server says


def _form_worker(url: str, ledger: Ledger, rng: random.Random, stop: threading.Event) -> None:
    for n in range(MAX_OPS_PER_WORKER):
        if stop.is_set():
            return
        reply: requests.Response | None = None
        try:
            roll = rng.random()
            if roll < 0.08 or not ledger.sessions:
                sid = f"f{threading.get_ident() % 10000}-{n}-{rng.randrange(1 << 30)}"
                reply = _call(ledger, "session", "POST", f"{url}/api/csv/sessions",
                              json={"session_id": sid})  # fmt: skip
                if reply.status_code == 201:
                    with ledger.lock:
                        ledger.sessions.append(sid)
            elif roll < 0.85:
                body = _csv(rng, 2 * 1024 * 1024 if rng.random() < 0.08 else 2 * 1024)
                sid = rng.choice(ledger.sessions)
                reply = _call(
                    ledger, "upload", "POST", f"{url}/api/csv/upload",
                    files={"file": ("load.csv", body, "text/csv")}, data={"session_id": sid},
                )  # fmt: skip
                if reply.status_code == 201:
                    with ledger.lock:
                        ledger.acked[reply.json()["file"]["id"]] = body
            else:
                with ledger.lock:
                    live = sorted(set(ledger.acked) - ledger.maybe_deleted)
                    if not live:
                        continue
                    file_id = rng.choice(live)
                    ledger.maybe_deleted.add(file_id)
                reply = _call(ledger, "delete", "DELETE", f"{url}/api/csv/files/{file_id}")
                if reply.status_code == 200:
                    with ledger.lock:
                        ledger.deleted.add(file_id)
        except requests.RequestException:
            reply = None
        if reply is None or reply.status_code >= 500:
            _pause(reply)


def _tus_upload(url: str, ledger: Ledger, rng: random.Random, stop: threading.Event) -> None:
    """One tus upload in three PATCHes, resumed through 503s from the offset HEAD tells."""
    body = _csv(rng, rng.choice([300_000, 1_200_000]))
    sid = rng.choice(ledger.sessions)
    headers = {**V, "Upload-Length": str(len(body)),
               "Upload-Metadata": metadata(session_id=sid, filename="tus.csv")}  # fmt: skip
    location = None
    while location is None:
        reply: requests.Response | None = None
        try:
            reply = _call(ledger, "tus-create", "POST", f"{url}{TUS}", headers=headers)
            if reply.status_code == 201:
                location = reply.headers["Location"]
        except requests.RequestException:
            pass
        if location is None:
            if stop.is_set():
                return
            _pause(reply)
    step = len(body) // 3 + 1
    offset = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        reply = None
        try:
            chunk = body[offset : offset + step]
            reply = _call(
                ledger, "tus-patch", "PATCH", f"{url}{location}", data=chunk,
                headers={**V, "Upload-Offset": str(offset),
                         "Content-Type": "application/offset+octet-stream"},
            )  # fmt: skip
            if reply.status_code == 409 and "Content-Location" in reply.headers:
                # Complete already: a request that failed here (503) finished its work.
                file_id = reply.headers["Content-Location"].rsplit("/", 1)[1]
                with ledger.lock:
                    ledger.acked[file_id] = body
                    ledger.tus_done += 1
                    ledger.tus_complete_409 += 1
                return
            if reply.status_code == 204:
                offset = int(reply.headers["Upload-Offset"])
                if offset == len(body):
                    file_id = reply.headers["Content-Location"].rsplit("/", 1)[1]
                    with ledger.lock:
                        ledger.acked[file_id] = body
                        ledger.tus_done += 1
                    return
                continue
        except requests.RequestException:
            pass
        _pause(reply)
        # Where does the upload stand? Ask until the server can say.
        while time.monotonic() < deadline:
            probe: requests.Response | None = None
            try:
                probe = _call(ledger, "tus-head", "HEAD", f"{url}{location}", headers=V)
                if probe.status_code == 200:
                    break
                if probe.status_code == 404:
                    ledger.tus_lost.append(location)
                    return
            except requests.RequestException:
                pass
            _pause(probe)
        else:
            break
        if "Content-Location" in probe.headers:  # completed by the request that failed
            file_id = probe.headers["Content-Location"].rsplit("/", 1)[1]
            with ledger.lock:
                ledger.acked[file_id] = body
                ledger.tus_done += 1
            return
        offset = int(probe.headers["Upload-Offset"])
    # Never completed within its time: given up, and terminated so it leaves nothing.
    ledger.tus_given_up.append(location)
    for _ in range(30):
        try:
            if _call(ledger, "tus-delete", "DELETE", f"{url}{location}", headers=V).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)


def _tus_worker(url: str, ledger: Ledger, rng: random.Random, stop: threading.Event) -> None:
    while not stop.is_set():
        if ledger.sessions:
            _tus_upload(url, ledger, rng, stop)
        else:
            time.sleep(0.2)


@pytest.fixture
def postgres() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL server of the test's own, fsync on: (URL, cluster folder)."""
    parent = Path(tempfile.mkdtemp(prefix="csvstore-faults-"))
    parent.chmod(0o755)  # the postgres user must reach it
    folder = parent / "pg"
    try:
        url = _script("pg-test-cluster", "start", str(folder)).strip()
        try:
            yield url, folder
        finally:
            _script("pg-test-cluster", "stop", str(folder))
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def seaweedfs(tmp_path: Path) -> Iterator[tuple[dict[str, str], list[subprocess.Popen[bytes]]]]:
    """A SeaweedFS of the test's own, authentication on: its S3 variables and WEED_DIR, and
    a list for the processes the test starts it again as (stopped and reaped at the end)."""
    folder = tmp_path / "s3"
    python = str(ROOT / ".venv" / "bin" / "python")
    lines = _script("s3-test-server", "start", str(folder), PY=python).split()
    found = dict(line.split("=", 1) for line in lines)
    restarted: list[subprocess.Popen[bytes]] = []
    try:
        yield {**found, "WEED_DIR": str(folder)}, restarted
    finally:
        _script("s3-test-server", "stop", str(folder))
        for weed in restarted:
            if weed.poll() is None:
                weed.kill()
            weed.wait(timeout=30)


def _restart_weed(folder: Path) -> subprocess.Popen[bytes]:
    argv, environ = _stop_weed(folder)
    time.sleep(2)  # down for a moment: requests in between find it gone
    log = (folder / "weed-restarted.log").open("ab")
    weed = subprocess.Popen(
        argv,
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    (folder / "pid").write_text(str(weed.pid))  # for the fixture's stop
    return weed


def test_restarts_of_postgres_and_seaweedfs_under_load_lose_nothing(
    postgres: tuple[str, Path],
    seaweedfs: tuple[dict[str, str], list[subprocess.Popen[bytes]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg_url, pg_folder = postgres
    s3, restarted = seaweedfs
    env = {
        "CSVSTORE_DATABASE_URL": pg_url,
        "CSVSTORE_STORAGE": f"s3://{s3['S3_BUCKET']}/faults",
        "CSVSTORE_S3_ENDPOINT_URL": s3["S3_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"],
        "CSVSTORE_SWEEP_INTERVAL": "2",  # leftovers S3 refused to remove are retried soon
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # for tests.s3util, and the check below
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        storage=env["CSVSTORE_STORAGE"],
        s3_endpoint_url=env["CSVSTORE_S3_ENDPOINT_URL"],
    )
    server = ServerProcess(settings.data_dir, "--ready-timeout", "2", env=env)
    server.start()
    ledger = Ledger()
    stop = threading.Event()
    rng = random.Random(SEED)
    threads = [
        threading.Thread(
            target=worker, args=(server.url, ledger, random.Random(rng.random()), stop)
        )
        for worker in [_form_worker] * FORM_WORKERS + [_tus_worker] * TUS_WORKERS
    ]
    restarts: Counter[str] = Counter()
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        time.sleep(3)
        for kind, mode in SCHEDULE:
            if kind == "pg":
                log = str(pg_folder / "server.log")  # else the server holds pg_ctl's stdout open
                _pg_ctl(pg_folder, "-m", mode, "-l", log, "-w", "-t", "60", "restart")
                restarts[f"PostgreSQL restart -m {mode}"] += 1
            else:
                restarted.append(_restart_weed(Path(s3["WEED_DIR"])))
                restarts["SeaweedFS stop and start"] += 1
                wait_ready(server.url, timeout=90)
            time.sleep(rng.uniform(2.0, 4.0))
        time.sleep(3)  # load on the recovered servers
        stop.set()
        for thread in threads:
            thread.join(timeout=150)
            assert not thread.is_alive(), "a client thread did not finish"
        assert server.proc is not None
        assert server.proc.poll() is None, "the csvstore server died:\n" + server.log()[-3000:]
        load_seconds = time.monotonic() - started

        wait_ready(server.url, timeout=60)
        expected = {
            file_id: body
            for file_id, body in ledger.acked.items()
            if file_id not in ledger.maybe_deleted
        }
        listed: dict[str, str] = {}  # file id -> session, every session's files
        for sid in ledger.sessions:
            reply = requests.get(f"{server.url}/api/csv/sessions/{sid}", timeout=60)
            assert reply.status_code == 200, reply.text
            listed |= {f["id"]: sid for f in reply.json()["csv_files"]}
        missing = sorted(set(expected) - set(listed))
        assert not missing, f"{len(missing)} acknowledged upload(s) not listed: {missing[:5]}"
        for file_id, body in expected.items():
            reply = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=60)
            assert reply.status_code == 200, f"{file_id}: {reply.status_code} {reply.text[:300]}"
            assert hashlib.sha256(reply.content).digest() == hashlib.sha256(body).digest(), file_id
        for file_id in ledger.deleted:
            assert file_id not in listed, f"deleted (200) but still listed: {file_id}"
        # Only what a client was told is stored, or may be (a delete that got no 200).
        unacknowledged = sorted(set(listed) - set(ledger.acked))

        objects, rows, temps = stored_state(settings)
        # Open (issue 15): a tus completion that S3 went away from after the object was
        # completed leaves that object when the upload is removed (HEAD then 404; see below);
        # it has no intent, so the check removes it. Only such objects may lack a row.
        lost_names = {f"{uuid.UUID(hex=loc.rsplit('/', 1)[1])}.csv" for loc in ledger.tus_lost}
        tus_leftovers = (objects - rows) & lost_names
        unlisted = objects - rows - tus_leftovers
        assert not unlisted, f"objects without a row: {unlisted}"
        assert rows <= objects, f"rows without an object: {rows - objects}"
        # Open (issue 15): a tus upload's multipart upload is created first, for its file's
        # name; when S3 goes away before its record is written (the creation answers 503) or
        # a call is retried across the outage, one is left that no record names. By design
        # the tus sweeper aborts those once older than the tus expiry (partial_s3.py), not
        # at once: counted here, not failed. Tails and anything else must be gone.
        # A finished upload's tails, or a multipart upload S3 left open under its file's
        # name, that S3 refused to remove at the time: the record says so and the sweep
        # (every 2 s here) removes them once S3 answers (tests/test_tus_s3_leftovers.py).
        deadline = time.monotonic() + 60
        while True:
            temps = stored_state(settings)[2]
            stray_tus_uploads = [n for n in temps if ".tail." not in n and n not in rows]
            others = [name for name in temps if name not in stray_tus_uploads]
            if not others or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert others == [], f"multipart uploads or tus tails left: {others}"
        for file_id, body in expected.items():
            assert s3util.read_object(settings, f"{file_id}.csv") == body, file_id
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=150)
        exit_code = server.stop()
    assert exit_code == 0, server.log()[-3000:]

    check = subprocess.run(
        [sys.executable, "-m", "csvstore", "check", "--data-dir", str(settings.data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    summary = check.stdout.splitlines()[0]
    counts = [int(n) for n in re.findall(r"\b(\d+)\b", summary.split(":", 1)[1])]
    assert counts, summary
    removed = f"removed 0 temp file(s) and {len(tus_leftovers)} stored file(s) without a row"
    assert removed in summary, summary
    if tus_leftovers:
        counts.remove(len(tus_leftovers))
    assert not any(counts), f"the check found something else to do: {summary}"

    failures = [a for a in ledger.answers if a.status >= 300 or a.status == 0]
    by_status = Counter(a.status for a in failures)
    # Open (issue 15): a tus upload whose completing PATCH gets a 503 because the database
    # is away is removed (tus._complete removes the upload on any failure), so the HEAD the
    # 503 invites answers 404 and the client must start again. Nothing is left behind (the
    # bucket checks above); every other failure must be a 503.
    lost_heads = [a for a in failures if a.op == "tus-head" and a.status == 404]
    assert len(lost_heads) == len(ledger.tus_lost)
    assert not ledger.tus_given_up, f"tus uploads never completed: {ledger.tus_given_up}"
    # A tus PATCH that S3 went away from could not release its lease (kept in S3): until
    # the lease lapses the upload answers 423 with Retry-After, which is the honest answer.
    locked = [a for a in failures if a.op == "tus-patch" and a.status == 423 and a.retry_after]
    # tus's answer to a request for an upload a failed request completed after all: the
    # file's Content-Location, i.e. an acknowledgement.
    complete = [a for a in failures if a.op == "tus-patch" and a.status == 409]
    assert len(complete) == ledger.tus_complete_409
    not_503 = [a for a in failures if a.status != 503 and a not in lost_heads + locked + complete]
    bad_503 = [a for a in failures if a.status == 503 and not (a.retry_after and a.problem)]
    print(
        f"\nfault test: {dict(restarts)} in {load_seconds:.0f} s; {len(ledger.answers)} "
        f"requests, {len(ledger.acked)} uploads acknowledged ({ledger.tus_done} by tus), "
        f"{len(expected)} checked byte for byte; {len(ledger.deleted)} deletes acknowledged; "
        f"failures by status: {dict(by_status)}; tus uploads lost: {len(ledger.tus_lost)}; "
        f"tus 409 complete after a failure: {ledger.tus_complete_409}; "
        f"unacknowledged rows: {len(unacknowledged)}; tus multipart uploads left for the "
        f"sweeper: {len(stray_tus_uploads)}; tus objects left for the check: {len(tus_leftovers)}"
    )
    assert not not_503, [(a.op, a.status, a.detail) for a in not_503[:10]]
    assert not bad_503, [(a.op, a.retry_after, a.detail) for a in bad_503[:10]]
    assert not unacknowledged, f"stored though answered 503: {unacknowledged[:10]}"
    assert sum(restarts.values()) == len(SCHEDULE)
    assert len(expected) > 100, "the load never got going"
    assert by_status[503] > 0, "no fault was ever seen by a client"
