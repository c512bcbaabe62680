"""Every named crash point (csvstore/crashpoints.py), walked one by one on the real server.

For each point: a server armed with ``CSVSTORE_CRASH_AT`` runs the operation that passes it
and is SIGKILLed there; a clean server then starts on the same data, and the invariants are
checked: every acknowledged upload is listed and byte-identical, an unacknowledged one is
absent or listed and byte-identical, a tus upload is complete or resumable from the offset
its client was last told, and ``csvstore check`` finds storage and database in line.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from csvstore.crashpoints import POINTS
from csvstore.storage.local import journal_supported
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.local_storage

SESSION = "crash"
TUS = "/api/csv/tus/"
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}


def _body(size: int, seed: int) -> bytes:
    line = f"{seed},row with some text,{seed * 3}.25\n".encode()
    rows = b"id,text,amount\n" + line * (size // len(line) + 1)
    return rows[:size].rsplit(b"\n", 1)[0] + b"\n"


@dataclass
class Sent:
    name: str
    body: bytes
    acked: bool = False


@dataclass
class Resumable:
    name: str
    body: bytes
    url: str  # the path: each server runs on a port of its own
    told: int  # the offset the client was last told
    done: bool = False


@dataclass
class Ledger:
    uploads: list[Sent] = field(default_factory=list)
    resumable: list[Resumable] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)  # names whose delete was acknowledged
    deleting: set[str] = field(default_factory=set)  # names whose delete was cut off


def _create_session(url: str) -> None:
    resp = requests.post(f"{url}/api/csv/sessions", json={"session_id": SESSION}, timeout=10)
    assert resp.status_code == 201, resp.text


def _post(url: str, ledger: Ledger, size: int) -> None:
    sent = Sent(
        f"f{len(ledger.uploads)}-{uuid.uuid4().hex[:6]}.csv", _body(size, len(ledger.uploads))
    )
    ledger.uploads.append(sent)
    try:
        resp = requests.post(
            f"{url}/api/csv/upload",
            data={"session_id": SESSION},
            files={"file": (sent.name, sent.body, "text/csv")},
            timeout=30,
        )
    except requests.ConnectionError:
        return
    assert resp.status_code == 201, resp.text
    sent.acked = True


def _meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def _tus(url: str, ledger: Ledger, size: int, first: int) -> None:
    """Create, send ``first`` bytes, then the rest; stops where the server died."""
    name = f"t{len(ledger.resumable)}-{uuid.uuid4().hex[:6]}.csv"
    body = _body(size, 1000 + len(ledger.resumable))
    created = requests.post(
        f"{url}{TUS}",
        headers={
            **TUS_HEADERS,
            "Upload-Length": str(len(body)),
            "Upload-Metadata": _meta(session_id=SESSION, filename=name),
        },
        timeout=10,
    )
    assert created.status_code == 201, created.text
    path = "/" + created.headers["Location"].split("/", 3)[-1].lstrip("/")
    if created.headers["Location"].startswith("/"):
        path = created.headers["Location"]
    upload = Resumable(name, body, path, told=0)
    ledger.resumable.append(upload)
    for start, end in ((0, first), (first, len(body))):
        try:
            resp = _patch(url + upload.url, body[start:end], start)
        except requests.ConnectionError:
            return
        assert resp.status_code == 204, resp.text
        upload.told = int(resp.headers["Upload-Offset"])
    upload.done = True


def _tus_whole(url: str, ledger: Ledger, size: int) -> None:
    """A creation-with-upload carrying the whole file: once answered, complete for HEAD."""
    sent = Sent(f"w{len(ledger.uploads)}-{uuid.uuid4().hex[:6]}.csv", _body(size, 2000))
    ledger.uploads.append(sent)
    try:
        resp = requests.post(
            f"{url}{TUS}",
            data=sent.body,
            headers={
                **TUS_HEADERS,
                "Upload-Length": str(len(sent.body)),
                "Upload-Metadata": _meta(session_id=SESSION, filename=sent.name),
                "Content-Type": "application/offset+octet-stream",
            },
            timeout=30,
        )
    except requests.ConnectionError:
        return
    assert resp.status_code == 201, resp.text
    sent.acked = True
    told = len(sent.body)
    ledger.resumable.append(Resumable(sent.name, sent.body, resp.headers["Location"], told, True))


def _patch(upload_url: str, chunk: bytes, offset: int) -> requests.Response:
    return requests.patch(
        upload_url,
        data=chunk,
        headers={
            **TUS_HEADERS,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=60,
    )


def _files(url: str) -> dict[str, str]:
    resp = requests.get(f"{url}/api/csv/sessions/{SESSION}", timeout=10)
    if resp.status_code == 404:  # deleted, with its files
        return {}
    assert resp.status_code == 200, resp.text
    return {f["original_filename"]: f["id"] for f in resp.json()["csv_files"]}


def _content(url: str, file_id: str) -> bytes:
    resp = requests.get(f"{url}/api/csv/files/{file_id}/content", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.content


def _delete_first(url: str, ledger: Ledger, *, session: bool = False) -> None:
    _post(url, ledger, 200)
    _post(url, ledger, 100_000)
    assert all(sent.acked for sent in ledger.uploads)
    names = {sent.name for sent in ledger.uploads}
    target = (
        f"{url}/api/csv/sessions/{SESSION}"
        if session
        else f"{url}/api/csv/files/{_files(url)[ledger.uploads[0].name]}"
    )
    gone = names if session else {ledger.uploads[0].name}
    ledger.deleting |= gone
    try:
        resp = requests.delete(target, timeout=10)
    except requests.ConnectionError:
        return
    assert resp.ok, resp.text
    ledger.deleted |= gone


Scenario = Callable[[str, Ledger], None]

SMALL = 2_000  # journaled (under JOURNAL_MAX)
LARGE = 300_000  # streamed through a temp file


def small(url: str, ledger: Ledger) -> None:
    _post(url, ledger, SMALL)


def large(url: str, ledger: Ledger) -> None:
    _post(url, ledger, LARGE)


def tus_upload(url: str, ledger: Ledger) -> None:
    _tus(url, ledger, LARGE, first=LARGE // 3)


def tus_small(url: str, ledger: Ledger) -> None:
    _tus(url, ledger, SMALL, first=SMALL // 3)


def tus_whole(url: str, ledger: Ledger) -> None:
    _tus_whole(url, ledger, SMALL)


def delete_file(url: str, ledger: Ledger) -> None:
    _delete_first(url, ledger)


def delete_session(url: str, ledger: Ledger) -> None:
    _delete_first(url, ledger, session=True)


def flush(url: str, ledger: Ledger) -> None:
    _post(url, ledger, SMALL)  # acknowledged; the flusher (every 0.2 s) then dies


# (point, scenario, extra server flags)
CASES: list[tuple[str, Scenario, tuple[str, ...]]] = [
    *[
        (p, s, ())
        for p in POINTS
        if p.startswith("publish.")
        for s in (small, large, tus_upload, tus_small, tus_whole)
    ],
    ("storage.file_synced", large, ()),
    ("storage.renamed", large, ()),
    ("storage.journal_written", small, ()),
    ("storage.journal_written", tus_whole, ()),
    ("storage.journal_written", tus_small, ()),
    *[(p, tus_upload, ()) for p in POINTS if p.startswith("tus.") and p != "tus.whole_published"],
    ("tus.whole_published", tus_whole, ()),
    *[(p, tus_small, ()) for p in ("tus.checkpoint_synced", "tus.row_committed", "tus.finished")],
    ("delete.row_removed", delete_file, ()),
    ("delete.row_removed", delete_session, ()),
    ("flush.synced", flush, ("--journal-interval", "0.2")),
]
# Passed outside a server's requests: by the start-up check and the check command; and
# migrate.bytes_copied by migrate-to, walked in tests/test_migrate.py (a check during the pause,
# a SIGKILL there).
OFFLINE = (
    "restore.file_written",
    "check.orphan_removed",
    "check.intent_cleared",
    "migrate.bytes_copied",
)


def test_every_point_is_walked() -> None:
    assert {case[0] for case in CASES} | set(OFFLINE) == set(POINTS)


def _new_store_with_session(data: Path) -> None:
    setup = ServerProcess(data)
    setup.start()
    _create_session(setup.url)
    assert setup.stop() == 0


def _wait_for_published(data: Path) -> list[Path]:
    """The stored files, once there is one (an upload held between publish and commit)."""
    deadline = time.monotonic() + 20
    while not (stored := list((data / "uploads").glob("*.csv"))):
        assert time.monotonic() < deadline, "the upload was never published"
        time.sleep(0.05)
    return stored


def _armed(data: Path, point: str, *flags: str) -> ServerProcess:
    return ServerProcess(data, *flags, env={"CSVSTORE_CRASH_AT": point})


def _died_at(server: ServerProcess, point: str) -> None:
    assert server.proc is not None
    try:
        code = server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"the server never passed {point}")
    assert code == -9, f"exit {code} instead of the SIGKILL at {point}:\n{server.log()}"


def _check(data: Path, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "csvstore", "check", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _verify(data: Path, ledger: Ledger) -> None:
    """The invariants, on a clean server over the same data, then ``check``."""
    server = ServerProcess(data)
    server.start()
    try:
        listed = _files(server.url)
        for sent in ledger.uploads:
            if sent.name in ledger.deleted:
                assert sent.name not in listed, f"{sent.name}: deleted, but listed"
                continue
            if sent.acked and sent.name not in ledger.deleting:
                assert sent.name in listed, f"{sent.name}: acknowledged, but not listed"
            if sent.name in listed:
                assert _content(server.url, listed[sent.name]) == sent.body, sent.name
        for upload in ledger.resumable:
            head = requests.head(server.url + upload.url, headers=TUS_HEADERS, timeout=10)
            assert head.status_code == 200, f"{upload.name}: HEAD {head.status_code}"
            offset = int(head.headers["Upload-Offset"])
            if offset < len(upload.body):
                # Resumable from where the client was told, never from anywhere else.
                assert offset == upload.told, (upload.name, offset, upload.told)
                assert not upload.done
                resp = _patch(server.url + upload.url, upload.body[offset:], offset)
                if resp.status_code == 409:  # an interrupted completion, settled as complete
                    assert int(resp.headers["Upload-Offset"]) == len(upload.body), resp.text
                else:
                    assert resp.status_code == 204, resp.text
            listed = _files(server.url)
            assert upload.name in listed, f"{upload.name}: complete, but not listed"
            assert _content(server.url, listed[upload.name]) == upload.body
    finally:
        assert server.stop() == 0
    report = _check(data)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "removed 0 temp file(s) and 0 stored file(s) without a row" in report.stdout, (
        report.stdout
    )
    stored = {p.name for p in (data / "uploads").glob("*.csv")}
    with sqlite3.connect(data / "csvstore.db") as db:
        rows = {path for (path,) in db.execute("SELECT file_path FROM files")}
        intents = db.execute("SELECT count(*) FROM upload_intents").fetchone()[0]
    assert stored == rows, report.stdout
    assert intents == 0


@pytest.mark.parametrize(
    ("point", "scenario", "flags"),
    CASES,
    ids=[f"{point}-{scenario.__name__}" for point, scenario, _ in CASES],
)
def test_crash_point(
    tmp_path: Path, point: str, scenario: Scenario, flags: tuple[str, ...]
) -> None:
    if point in ("storage.journal_written", "flush.synced") and not journal_supported():
        pytest.skip("the journal needs syncfs that reports errors (Linux >= 5.8)")
    data = tmp_path / "data"
    ledger = Ledger()
    _new_store_with_session(data)
    server = _armed(data, point, *flags)
    server.start()
    scenario(server.url, ledger)
    if point == "flush.synced":
        time.sleep(0.5)
    _died_at(server, point)
    _verify(data, ledger)


def test_crash_while_restoring_the_journal(tmp_path: Path) -> None:
    if not journal_supported():
        pytest.skip("the journal needs syncfs that reports errors (Linux >= 5.8)")
    data = tmp_path / "data"
    ledger = Ledger()
    server = ServerProcess(data, "--journal-interval", "86400")
    server.start()
    _create_session(server.url)
    for _ in range(3):
        small(server.url, ledger)
    server.kill()  # journal entries left: the next start-up writes them back
    armed = _armed(data, "restore.file_written")
    with pytest.raises(RuntimeError, match="did not start"):
        armed.start(timeout=20)
    assert armed.proc is not None
    assert armed.proc.returncode == -9, armed.log()
    _verify(data, ledger)


@pytest.mark.parametrize("point", ["check.orphan_removed", "check.intent_cleared"])
def test_crash_during_check(tmp_path: Path, point: str) -> None:
    data = tmp_path / "data"
    ledger = Ledger()
    setup = ServerProcess(data)
    setup.start()
    _create_session(setup.url)
    large(setup.url, ledger)
    assert setup.stop() == 0
    # Two publishes that die before their rows: orphans with intents of a dead process.
    for _ in range(2):
        server = _armed(data, "publish.bytes_published")
        server.start()
        large(server.url, ledger)
        _died_at(server, "publish.bytes_published")
    report = _check(data, env={"CSVSTORE_CRASH_AT": point})
    assert report.returncode == -9, report.stdout + report.stderr
    again = _check(data)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cleared" in again.stdout
    _verify(data, ledger)


def test_a_check_during_a_slow_publish_spares_it(tmp_path: Path) -> None:
    """A file published long after its last write (a slow form tail, a tus completion that
    re-reads 1 GiB) looks old; a check run between its publish and its commit used to take
    it for an orphan, and the client then got a 201 for bytes that were gone."""
    data = tmp_path / "data"
    _new_store_with_session(data)
    server = ServerProcess(data, env={"CSVSTORE_PAUSE_AT": "publish.bytes_published:6"})
    server.start()
    ledger = Ledger()
    try:
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(large, server.url, ledger)
            stored = _wait_for_published(data)
            hours_ago = time.time() - 7200  # as old as its last write, which a rename keeps
            os.utime(stored[0], (hours_ago, hours_ago))
            report = _check(data)
            assert report.returncode == 0, report.stdout + report.stderr
            assert stored[0].exists(), "the check removed an upload about to be committed"
            sending.result(timeout=30)
        assert ledger.uploads[0].acked
        listed = _files(server.url)
        assert _content(server.url, listed[ledger.uploads[0].name]) == ledger.uploads[0].body
    finally:
        server.stop()


def test_a_second_server_starting_on_the_data_dir_spares_the_first_ones_uploads(
    tmp_path: Path,
) -> None:
    """The start-up check removes the temp files a crash left: not those of an upload that
    another live server on the same data dir is still receiving (it holds their flock)."""
    import socket

    data = tmp_path / "data"
    _new_store_with_session(data)
    first = ServerProcess(data)
    first.start()
    second = ServerProcess(data)
    body = b"id,name\n" + b"".join(b"%d,name %d\n" % (i, i) for i in range(200_000))
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n'
        f"{SESSION}\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="slow.csv"\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    payload = head + body + tail
    host, port = first.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                f"POST /api/csv/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            )
            half = len(payload) // 2
            sock.sendall(payload[:half])
            deadline = time.monotonic() + 20
            while not list((data / "tmp").glob("*.part")):
                assert time.monotonic() < deadline, "the upload never reached a temp file"
                time.sleep(0.05)
            second.start()  # its start-up check runs on the same data dir
            assert list((data / "tmp").glob("*.part")), "the live upload's temp file was removed"
            sock.sendall(payload[half:])
            answer = sock.recv(65536).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 201"), answer[:300]
    finally:
        second.stop()
        first.stop()
    stored = list((data / "uploads").glob("*.csv"))
    assert [p.read_bytes() for p in stored] == [body]


def test_a_session_deleted_while_its_tus_upload_completes(tmp_path: Path) -> None:
    """Server A is held in the middle of a tus completion (bytes published, row not in);
    server B, on the same data, deletes the session. A then finds no session to commit
    into: the client gets 404, and neither the stored file nor the upload is left."""
    data = tmp_path / "data"
    _new_store_with_session(data)
    held = ServerProcess(data, env={"CSVSTORE_PAUSE_AT": "publish.bytes_published:6"})
    held.start()
    other = ServerProcess(data)
    other.start()
    ledger = Ledger()
    try:
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(tus_upload, held.url, ledger)
            _wait_for_published(data)
            resp = requests.delete(f"{other.url}/api/csv/sessions/{SESSION}", timeout=10)
            assert resp.status_code == 200, resp.text
            with pytest.raises(AssertionError, match="404"):
                sending.result(timeout=30)
        upload = ledger.resumable[0]
        head = requests.head(held.url + upload.url, headers=TUS_HEADERS, timeout=10)
        assert head.status_code == 404
    finally:
        held.stop()
        other.stop()
    assert list((data / "uploads").glob("*.csv")) == []
    assert [p for p in (data / "tmp").rglob("*") if p.is_file()] == []
    report = _check(data)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "removed 0 temp file(s) and 0 stored file(s)" in report.stdout
