"""Resumable uploads (tus 1.0) against the real ``python -m csvstore`` process.

The client is the real ``tuspy`` from PyPI; dropped connections are made by a local proxy
that cuts a connection mid-request (``tests/tusproxy.py``). A resumed upload must be
indistinguishable from a single-shot upload of the same bytes.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import os
import random
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError
from tusclient.uploader.uploader import Uploader

from csvstore.config import Settings
from csvstore.db.queries import Queries
from csvstore.web.schemas import SESSION_ID_RULE
from tests.conftest import stored_names
from tests.serverproc import ServerProcess
from tests.tusproxy import DroppingProxy

TUS = "/api/csv/tus/"
V = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"
MAX_UPLOAD = 48 * 1024 * 1024
# make stress sets it to 1 GiB; make test runs the same test on a few MiB.
STRESS_SIZE = int(os.environ.get("CSVSTORE_TUS_STRESS_SIZE", str(6 * 1024 * 1024)))
KILL_ROUNDS = int(os.environ.get("CSVSTORE_TUS_KILL_ROUNDS", "2"))
# What a resumed and a single-shot upload of the same bytes may differ in.
PER_UPLOAD_FIELDS = {"id", "filename", "created_at"}


class Sha256Uploader(Uploader):
    """tuspy sends sha1 checksums; the tus checksum extension asked of csvstore is sha256."""

    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)


def tus_upload(
    url: str,
    path: Path,
    *,
    session_id: str,
    chunk_size: int | None = None,
    checksum: bool = False,
    retries: int = 5,
    filename: str | None = None,
) -> str:
    """Upload with tuspy through ``url``; the upload's URL."""
    client = tus_client.TusClient(f"{url}{TUS}")
    # A stream rather than a path: tuspy opens a path anew per request and never closes it.
    with path.open("rb") as stream:
        uploader = Sha256Uploader(
            file_stream=stream,
            client=client,
            chunk_size=chunk_size or (1 << 62),
            metadata={"session_id": session_id, "filename": filename or path.name},
            retries=retries,
            retry_delay=0.2,  # type: ignore[arg-type]  # seconds; tuspy sleeps any number
            upload_checksum=checksum,
        )
        uploader.upload()
    return str(uploader.url)


def tus_upload_through_restarts(url: str, path: Path, **options: Any) -> str:
    """`tus_upload` to a server that may be down (killed and restarting) at any moment.

    tuspy retries its PATCHes but not the creation: a creation that found no server is
    tried again; one the server answered with an error is not.
    """
    for _ in range(20):
        try:
            return tus_upload(url, path, **options)
        except TusCommunicationError as exc:
            if exc.status_code is not None:
                raise
            time.sleep(0.3)  # the server was down when the upload was created
    raise AssertionError(f"no server took the creation of {path.name}")


def path_of(url: str) -> str:
    """``http://host:port/api/...`` -> ``/api/...``"""
    return "/" + url.split("/", 3)[3]


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(
    url: str, length: int, *, session_id: str = "s1", filename: str = "data.csv", **extra: str
) -> requests.Response:
    meta = metadata(session_id=session_id, filename=filename, **extra)
    headers = {**V, "Upload-Length": str(length), "Upload-Metadata": meta}
    return requests.post(f"{url}{TUS}", headers=headers, timeout=30)


def patch(url: str, location: str, offset: int, body: bytes, **headers: str) -> requests.Response:
    sent = {**V, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM, **headers}
    return requests.patch(f"{url}{location}", data=body, headers=sent, timeout=60)


def head(url: str, location: str) -> requests.Response:
    return requests.head(f"{url}{location}", headers=V, timeout=30)


def assert_problem(resp: requests.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert isinstance(body["detail"], str)
    assert len(body["detail"]) > 5
    assert body["type"] == f"urn:csvstore:problem:{body['code']}"
    return body


def csv_file(path: Path, size: int, *, seed: int = 1) -> bytes:
    """A CSV of about ``size`` bytes with quoting, commas in quotes and non-ASCII text."""
    rng = random.Random(seed)
    words = ["alpha", "beta", '"quoted, with comma"', "Zürich", "naïve", "x" * 40, "7.5"]
    lines = [b"id,name,city,amount,note\r\n"]
    total = len(lines[0])
    i = 0
    while total < size:
        row = f"{i},{rng.choice(words)},{rng.choice(words)},{rng.random():.6f},row {i}\r\n"
        data = row.encode()
        lines.append(data)
        total += len(data)
        i += 1
    body = b"".join(lines)
    path.write_bytes(body)
    return body


def file_id_of(resp: requests.Response) -> str:
    return resp.headers["Content-Location"].rsplit("/", 1)[1]


def file_row(url: str, file_id: str) -> dict[str, Any]:
    resp = requests.get(f"{url}/api/csv/files/{file_id}", timeout=30)
    assert resp.status_code == 200, resp.text
    row: dict[str, Any] = resp.json()
    return row


def single_shot(url: str, path: Path, session_id: str) -> dict[str, Any]:
    """The same file through POST /api/csv/upload, streamed by curl."""
    out = subprocess.run(
        ["curl", "-sS", "-F", f"file=@{path}", "-F", f"session_id={session_id}",
         f"{url}/api/csv/upload"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    body: dict[str, Any] = json.loads(out.stdout)
    assert "file" in body, body
    file: dict[str, Any] = body["file"]
    return file


def without_per_upload_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in PER_UPLOAD_FIELDS}


def partial_files(data_dir: Path) -> list[str]:
    directory = data_dir / "tmp" / "tus"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def assert_uploads_match_rows(settings: Settings) -> None:
    with sqlite3.connect(f"file:{settings.database_path}?mode=ro", uri=True) as conn:
        listed = {row[0] for row in conn.execute(Queries().all_file_paths.sql)}
    on_disk = set(stored_names(settings.uploads_dir))
    assert on_disk == listed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = Path(tmp_path_factory.mktemp("tus")) / "data"
    proc = ServerProcess(data, "--max-upload-size", str(MAX_UPLOAD), "--body-read-timeout", "5")
    proc.start()
    yield proc
    assert proc.stop() == 0
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


@pytest.fixture
def session(server: ServerProcess) -> str:
    session_id = f"s{random.randrange(1 << 40)}"
    resp = requests.post(
        f"{server.url}/api/csv/sessions", json={"session_id": session_id}, timeout=30
    )
    assert resp.status_code == 201
    return session_id


# Discovery and the protocol's own answers


def test_options_tells_what_the_server_supports(server: ServerProcess) -> None:
    resp = requests.options(f"{server.url}{TUS}", timeout=30)
    assert resp.status_code == 204
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert resp.headers["Tus-Version"] == "1.0.0"
    assert set(resp.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "termination", "checksum", "expiration",
    }  # fmt: skip
    assert resp.headers["Tus-Max-Size"] == str(MAX_UPLOAD)
    assert "sha256" in resp.headers["Tus-Checksum-Algorithm"].split(",")


def test_create_head_patch_and_not_listed_until_complete(
    server: ServerProcess, session: str, tmp_path: Path
) -> None:
    body = csv_file(tmp_path / "a.csv", 300_000)
    created = create(server.url, len(body), session_id=session, filename="a.csv")
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    assert location.startswith(TUS)
    assert created.headers["Tus-Resumable"] == "1.0.0"
    expires = email.utils.parsedate_to_datetime(created.headers["Upload-Expires"]).timestamp()
    assert time.time() + 23 * 3600 < expires < time.time() + 25 * 3600  # the 24 h default

    probe = head(server.url, location)
    assert probe.status_code == 200
    assert probe.headers["Upload-Offset"] == "0"
    assert probe.headers["Upload-Length"] == str(len(body))
    assert probe.headers["Cache-Control"] == "no-store"
    assert probe.headers["Upload-Metadata"] == metadata(session_id=session, filename="a.csv")

    half = len(body) // 2
    first = patch(server.url, location, 0, body[:half])
    assert first.status_code == 204, first.text
    assert first.headers["Upload-Offset"] == str(half)
    assert head(server.url, location).headers["Upload-Offset"] == str(half)
    # Half an upload is nobody's file yet: not in its session, not in uploads/.
    listed = requests.get(f"{server.url}/api/csv/sessions/{session}", timeout=30).json()
    assert listed["csv_files"] == []
    upload_id = location.rsplit("/", 1)[1]
    assert f"{upload_id}.part" in partial_files(server.data_dir)

    last = patch(server.url, location, half, body[half:])
    assert last.status_code == 204, last.text
    assert last.headers["Upload-Offset"] == str(len(body))
    file_id = file_id_of(last)
    listed = requests.get(f"{server.url}/api/csv/sessions/{session}", timeout=30).json()
    assert [f["id"] for f in listed["csv_files"]] == [file_id]
    content = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=30)
    assert content.content == body
    assert f"{upload_id}.part" not in partial_files(server.data_dir)
    # Its two requests reached the same process: the analysis carried over, no re-read.
    assert f"tus upload {upload_id} complete" in server.log()
    assert f"{upload_id} complete: file {file_id}; {len(body)} bytes analysed while" in (
        server.log()
    )
    # A completed upload still answers HEAD, so a client that lost the last answer learns.
    done = head(server.url, location)
    assert done.headers["Upload-Offset"] == str(len(body))
    assert done.headers["Content-Location"] == f"/api/csv/files/{file_id}"
    # ... and a retry of the final request (nothing left to send) is not an error.
    again = patch(server.url, location, len(body), b"")
    assert again.status_code == 204
    assert_problem(patch(server.url, location, 0, body[:10]), 409)


def test_creation_with_upload_stores_a_small_file_in_one_request(
    server: ServerProcess, session: str
) -> None:
    body = b"a,b\n1,2\n"
    meta = metadata(session_id=session, filename="one.csv")
    resp = requests.post(
        f"{server.url}{TUS}",
        data=body,
        headers={
            **V,
            "Upload-Length": str(len(body)),
            "Upload-Metadata": meta,
            "Content-Type": OFFSET_STREAM,
        },
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["Upload-Offset"] == str(len(body))
    row = file_row(server.url, file_id_of(resp))
    assert (row["original_filename"], row["file_size"]) == ("one.csv", len(body))
    assert row["sha256"] == hashlib.sha256(body).hexdigest()


def test_an_empty_upload_is_whole_at_creation_and_named_like_one(
    server: ServerProcess, session: str
) -> None:
    """Upload-Length 0 completes at creation, with or without an (empty) body: its file id is
    the upload id, as for any whole creation."""
    # No body; an empty one (Content-Length: 0); an empty chunked one (a body, of no bytes).
    for body in (None, b"", iter([b""])):
        headers = {
            **V,
            "Upload-Length": "0",
            "Upload-Metadata": metadata(session_id=session, filename="empty.csv"),
        }
        if body is not None:
            headers["Content-Type"] = OFFSET_STREAM
        resp = requests.post(f"{server.url}{TUS}", data=body, headers=headers, timeout=30)
        assert resp.status_code == 201, resp.text
        assert resp.headers["Upload-Offset"] == "0"
        upload_id = resp.headers["Location"].rsplit("/", 1)[1]
        file_id = file_id_of(resp)
        assert file_id.replace("-", "") == upload_id
        assert file_row(server.url, file_id)["file_size"] == 0
        probe = head(server.url, resp.headers["Location"])
        assert probe.headers["Upload-Offset"] == probe.headers["Upload-Length"] == "0"
    # The empty body's checksum is checked: a wrong one stores nothing.
    checksum = "sha256 " + base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    wrong = {**headers, "Content-Type": OFFSET_STREAM, "Upload-Checksum": checksum}
    resp = requests.post(f"{server.url}{TUS}", data=iter([b""]), headers=wrong, timeout=30)
    assert_problem(resp, 460)


def test_a_whole_small_creation_is_published_as_a_multipart_upload(
    server: ServerProcess, session: str
) -> None:
    """A creation-with-upload carrying the whole file skips the partial store: no data file,
    and no state when the row can rebuild its Upload-Metadata for HEAD; else a state, not
    fsynced (the row is the durable record: HEAD still answers once a power cut took it)."""
    body = b"a,b\n1,2\n"
    before = partial_files(server.data_dir)
    usual = metadata(session_id=session, filename="usual.csv")
    resp = requests.post(
        f"{server.url}{TUS}", data=body,
        headers={**V, "Upload-Length": str(len(body)), "Upload-Metadata": usual,
                 "Content-Type": OFFSET_STREAM},
        timeout=30,
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    assert partial_files(server.data_dir) == before
    probe = head(server.url, resp.headers["Location"])
    assert probe.status_code == 200, probe.text
    assert probe.headers["Upload-Metadata"] == usual
    assert probe.headers["Upload-Offset"] == probe.headers["Upload-Length"] == str(len(body))
    assert probe.headers["Content-Location"] == resp.headers["Content-Location"]
    assert requests.delete(f"{server.url}{resp.headers['Location']}", headers=V).status_code == 204
    # Metadata beyond the two keys: kept in a state file.
    meta = metadata(session_id=session, filename="whole.csv", strict="true")
    headers = {**V, "Upload-Length": str(len(body)), "Upload-Metadata": meta}
    resp = requests.post(
        f"{server.url}{TUS}", data=body, headers={**headers, "Content-Type": OFFSET_STREAM},
        timeout=30,
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    upload_id = resp.headers["Location"].rsplit("/", 1)[1]
    file_id = file_id_of(resp)
    assert file_id.replace("-", "") == upload_id  # the row names the upload
    left = partial_files(server.data_dir)
    assert f"{upload_id}.json" in left
    assert f"{upload_id}.part" not in left
    assert file_row(server.url, file_id)["file_size"] == len(body)
    probe = head(server.url, resp.headers["Location"])
    assert probe.status_code == 200
    assert probe.headers["Upload-Metadata"] == meta
    assert probe.headers["Upload-Offset"] == probe.headers["Upload-Length"] == str(len(body))
    # The state lost (a power cut: it was never fsynced): the row answers.
    (server.data_dir / "tmp" / "tus" / f"{upload_id}.json").unlink()
    probe = head(server.url, resp.headers["Location"])
    assert probe.status_code == 200, probe.text
    assert probe.headers["Upload-Offset"] == str(len(body))
    assert probe.headers["Content-Location"] == f"/api/csv/files/{file_id}"
    assert patch(server.url, resp.headers["Location"], len(body), b"").status_code == 204
    assert_problem(patch(server.url, resp.headers["Location"], 0, body), 409)
    # Refused as a multipart upload would be, and nothing is left.
    bad = requests.post(
        f"{server.url}{TUS}", data=b"\x00\x01\x02binary",
        headers={**headers, "Upload-Length": "9", "Content-Type": OFFSET_STREAM}, timeout=30,
    )  # fmt: skip
    assert assert_problem(bad, 400)["code"] == "not-csv"
    assert set(partial_files(server.data_dir)) == set(left) - {f"{upload_id}.json"}
    # A deleted file's upload is gone too.
    assert requests.delete(f"{server.url}/api/csv/files/{file_id}", timeout=30).ok
    assert head(server.url, resp.headers["Location"]).status_code == 404


def test_a_small_upload_completes_as_a_small_multipart_upload(
    server: ServerProcess, session: str
) -> None:
    """The last PATCH of a small upload publishes it journaled, under the upload's id (so
    the row says it was published), instead of fsyncing and linking its data file."""
    body = b"a,b\n" + b"1,2\n" * 500
    location = create(server.url, len(body), session_id=session, filename="s.csv").headers[
        "Location"
    ]
    upload_id = location.rsplit("/", 1)[1]
    assert patch(server.url, location, 0, body[:1000]).status_code == 204
    last = patch(server.url, location, 1000, body[1000:])
    assert last.status_code == 204, last.text
    assert last.headers["Upload-Offset"] == str(len(body))
    file_id = file_id_of(last)
    assert file_id.replace("-", "") == upload_id
    assert f"{upload_id}.part" not in partial_files(server.data_dir)
    content = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=30)
    assert content.content == body
    assert file_row(server.url, file_id)["sha256"] == hashlib.sha256(body).hexdigest()
    done = head(server.url, location)
    assert done.headers["Upload-Offset"] == str(len(body))
    assert done.headers["Content-Location"] == f"/api/csv/files/{file_id}"


def test_terminating_an_unknown_upload_on_a_new_server_is_404(tmp_path: Path) -> None:
    """Before any partial upload, tmp/tus/ does not exist: the removal fsynced it anyway (500)."""
    proc = ServerProcess(tmp_path / "data")
    proc.start()
    try:
        resp = requests.delete(f"{proc.url}{TUS}{'0' * 32}", headers=V, timeout=30)
        assert_problem(resp, 404)
    finally:
        assert proc.stop() == 0
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def test_protocol_errors(server: ServerProcess, session: str) -> None:
    url = server.url
    # 412 with Tus-Version: no Tus-Resumable, or another version.
    for headers, said in (({}, "none was sent"), ({"Tus-Resumable": "0.2.2"}, "'0.2.2'")):
        resp = requests.post(f"{url}{TUS}", headers={"Upload-Length": "3", **headers}, timeout=30)
        assert said in assert_problem(resp, 412)["detail"]
        assert resp.headers["Tus-Version"] == "1.0.0"
    # 413: more than the upload limit, refused before a byte is sent.
    assert_problem(create(url, MAX_UPLOAD + 1, session_id=session), 413)
    # 404: the session must exist; 400: a .csv name, both metadata keys, base64, a length.
    assert_problem(create(url, 10, session_id="no-such-session"), 404)
    bad_id = assert_problem(create(url, 10, session_id=".hidden"), 400)
    assert bad_id["errors"]["session_id"] == [SESSION_ID_RULE]
    assert (
        "only .csv"
        in assert_problem(create(url, 10, session_id=session, filename="x.txt"), 400)["detail"]
    )
    no_session = {**V, "Upload-Length": "3", "Upload-Metadata": metadata(filename="a.csv")}
    assert_problem(requests.post(f"{url}{TUS}", headers=no_session, timeout=30), 400)
    bad_b64 = {**V, "Upload-Length": "3", "Upload-Metadata": "session_id !!!,filename x"}
    assert_problem(requests.post(f"{url}{TUS}", headers=bad_b64, timeout=30), 400)
    no_length = {**V, "Upload-Metadata": metadata(session_id=session, filename="a.csv")}
    assert_problem(requests.post(f"{url}{TUS}", headers=no_length, timeout=30), 400)

    location = create(url, 8, session_id=session).headers["Location"]
    # 415: a PATCH body is application/offset+octet-stream.
    assert_problem(patch(url, location, 0, b"a,b\n", **{"Content-Type": "text/csv"}), 415)
    untyped = requests.patch(
        f"{url}{location}", data=b"a,b\n", headers={**V, "Upload-Offset": "0"}, timeout=30
    )
    assert assert_problem(untyped, 415)["detail"].endswith("got none")
    # 409: the offset must be the upload's; the answer says which it is.
    conflict = patch(url, location, 3, b"a,b\n")
    assert_problem(conflict, 409)
    assert conflict.headers["Upload-Offset"] == "0"
    # 413: a body that goes past Upload-Length; nothing of it is kept.
    assert_problem(patch(url, location, 0, b"a,b\n1,2\n3,4\n"), 413)
    assert head(url, location).headers["Upload-Offset"] == "0"
    # 400: Upload-Offset missing or not a number; an unknown checksum algorithm.
    missing = requests.patch(
        f"{url}{location}", data=b"a", headers={**V, "Content-Type": OFFSET_STREAM}, timeout=30
    )
    assert_problem(missing, 400)
    assert_problem(patch(url, location, 0, b"a", **{"Upload-Offset": "-1"}), 400)
    assert_problem(patch(url, location, 0, b"a", **{"Upload-Checksum": "crc32 AAAA"}), 400)
    # 404: an upload that does not exist (or a made-up id of any shape).
    for bogus in (f"{TUS}{'0' * 32}", f"{TUS}..%2F..%2Fcsvstore.db", f"{TUS}x"):
        assert head(url, bogus).status_code == 404
        assert_problem(patch(url, bogus, 0, b"a"), 404)
    # and every answer of the endpoint, errors included, says Tus-Resumable
    assert requests.get(f"{url}{TUS}x", timeout=30).headers["Tus-Resumable"] == "1.0.0"


def test_checksum_mismatch_is_460_and_keeps_the_offset(server: ServerProcess, session: str) -> None:
    body = b"id,v\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(2000))
    location = create(server.url, len(body), session_id=session).headers["Location"]
    half = len(body) // 2

    def sha256_of(data: bytes) -> str:
        return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()

    good = patch(
        server.url, location, 0, body[:half], **{"Upload-Checksum": sha256_of(body[:half])}
    )
    assert good.status_code == 204
    corrupted = body[half:-1] + b"X"
    bad = patch(
        server.url, location, half, corrupted, **{"Upload-Checksum": sha256_of(body[half:])}
    )
    assert_problem(bad, 460)
    assert bad.reason == "Checksum Mismatch"
    assert head(server.url, location).headers["Upload-Offset"] == str(half)
    fixed = patch(
        server.url, location, half, body[half:], **{"Upload-Checksum": sha256_of(body[half:])}
    )
    assert fixed.status_code == 204
    stored = requests.get(f"{server.url}/api/csv/files/{file_id_of(fixed)}/content", timeout=30)
    assert stored.content == body


def _raw_patch_start(
    port: int, location: str, offset: int, length: int, body: bytes
) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: {offset}\r\nContent-Type: {OFFSET_STREAM}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    return sock


def test_concurrent_patches_one_wins_the_other_is_refused(
    server: ServerProcess, session: str
) -> None:
    body = b"id,v\n" + b"".join(f"{i},{i}\n".encode() for i in range(100_000))
    location = create(server.url, len(body), session_id=session).headers["Location"]
    # The first PATCH is in flight: half its body sent, the rest held back.
    first = _raw_patch_start(server.port, location, 0, len(body), body[: len(body) // 2])
    try:
        time.sleep(0.3)
        second = patch(server.url, location, 0, body)
        assert second.status_code in (409, 423), second.text
        assert_problem(second, second.status_code)
        held = requests.delete(f"{server.url}{location}", headers=V, timeout=30)
        assert_problem(held, 423)
        assert held.headers["Retry-After"] == "1"
        first.sendall(body[len(body) // 2 :])
        answer = first.recv(65536).decode()
    finally:
        first.close()
    assert answer.startswith("HTTP/1.1 204"), answer
    file_id = next(
        line.split("/")[-1].strip()
        for line in answer.splitlines()
        if line.lower().startswith("content-location:")
    )
    stored = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=30)
    assert stored.content == body


def test_termination_removes_the_partial_upload(server: ServerProcess, session: str) -> None:
    location = create(server.url, 100, session_id=session).headers["Location"]
    assert patch(server.url, location, 0, b"a,b\n1,2\n").status_code == 204
    upload_id = location.rsplit("/", 1)[1]
    assert f"{upload_id}.part" in partial_files(server.data_dir)
    resp = requests.delete(f"{server.url}{location}", headers=V, timeout=30)
    assert resp.status_code == 204
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert head(server.url, location).status_code == 404
    assert not [n for n in partial_files(server.data_dir) if n.startswith(upload_id)]
    assert_problem(requests.delete(f"{server.url}{location}", headers=V, timeout=30), 404)
    assert_problem(patch(server.url, location, 8, b"3,4\n"), 404)


def test_not_a_csv_is_refused_and_nothing_is_left(server: ServerProcess, session: str) -> None:
    uploads_before = set(os.listdir(server.data_dir / "uploads"))
    # A PNG is refused at its first bytes, not after the whole file has arrived.
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    location = create(server.url, len(png), session_id=session, filename="p.csv").headers[
        "Location"
    ]
    refused = patch(server.url, location, 0, png[:4096])
    assert "PNG" in assert_problem(refused, 400)["detail"]
    assert head(server.url, location).status_code == 404
    # A NUL in the last chunk: refused when the complete file is checked.
    body = b"a,b\n" * 1000 + b"1,\x00\n"
    location = create(server.url, len(body), session_id=session).headers["Location"]
    assert patch(server.url, location, 0, body[:2000]).status_code == 204
    assert "NUL" in assert_problem(patch(server.url, location, 2000, body[2000:]), 400)["detail"]
    assert head(server.url, location).status_code == 404
    upload_id = location.rsplit("/", 1)[1]
    assert not [n for n in partial_files(server.data_dir) if n.startswith(upload_id)]
    assert set(os.listdir(server.data_dir / "uploads")) == uploads_before


def test_large_blocks_pipelined_to_threads_give_the_whole_files_facts(
    server: ServerProcess, session: str
) -> None:
    # Blocks of 256 KiB and more are appended and hashed (the checksum too) in threads while
    # the next block is checked: the facts are the whole file's, in order.
    rows = [b'%d,"a\nb ""%d""",caf\xc3\xa9\r\n' % (i, i) for i in range(150_000)]
    body = b"id,text,place\r\n" + b"".join(rows)
    split = len(body) // 3 + 1  # an odd cut, inside a record
    location = create(server.url, len(body), session_id=session).headers["Location"]
    assert patch(server.url, location, 0, body[:split]).status_code == 204
    tail = hashlib.sha256(body[split:]).digest()
    checksum = {"Upload-Checksum": "sha256 " + base64.b64encode(tail).decode()}
    last = patch(server.url, location, split, body[split:], **checksum)
    assert last.status_code == 204, last.text
    row = file_row(server.url, file_id_of(last))
    assert row["sha256"] == hashlib.sha256(body).hexdigest()
    assert (row["row_count"], row["ragged_rows"], row["column_count"]) == (150_000, 0, 3)
    # A NUL past the first megabytes is refused all the same, and nothing is left.
    bad = body[:split] + b"\x00" + body[split + 1 :]
    location = create(server.url, len(bad), session_id=session).headers["Location"]
    assert "NUL" in assert_problem(patch(server.url, location, 0, bad), 400)["detail"]
    assert head(server.url, location).status_code == 404
    upload_id = location.rsplit("/", 1)[1]
    assert not [n for n in partial_files(server.data_dir) if n.startswith(upload_id)]


def test_a_session_deleted_meanwhile_takes_the_upload_with_it(server: ServerProcess) -> None:
    requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "gone"}, timeout=30)
    body = b"a,b\n1,2\n"
    location = create(server.url, len(body), session_id="gone").headers["Location"]
    assert patch(server.url, location, 0, body[:4]).status_code == 204
    assert requests.delete(f"{server.url}/api/csv/sessions/gone", timeout=30).status_code == 200
    assert_problem(patch(server.url, location, 4, body[4:]), 404)
    assert head(server.url, location).status_code == 404
    upload_id = location.rsplit("/", 1)[1]
    assert not [n for n in partial_files(server.data_dir) if n.startswith(upload_id)]


def test_metadata_options_work_as_for_a_single_shot_upload(
    server: ServerProcess, session: str
) -> None:
    body = b"a,b\n1,2\n"
    wrong = "0" * 64
    location = create(server.url, len(body), session_id=session, sha256=wrong).headers["Location"]
    assert "sha256 mismatch" in assert_problem(patch(server.url, location, 0, body), 400)["detail"]
    first = create(server.url, len(body), session_id=session, dedupe="true")
    done = patch(server.url, first.headers["Location"], 0, body)
    again = create(server.url, len(body), session_id=session, dedupe="true")
    twin = patch(server.url, again.headers["Location"], 0, body)
    assert file_id_of(twin) == file_id_of(done)  # the same bytes are stored once
    assert_problem(create(server.url, 3, session_id=session, strict="maybe"), 400)


# tuspy, dropped connections, and the single-shot comparison


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "sha256-checksums"])
def test_tuspy_resumes_through_dropped_connections(
    server: ServerProcess, session: str, tmp_path: Path, checksum: bool
) -> None:
    path = tmp_path / "resumed.csv"
    body = csv_file(path, 3 * 1024 * 1024, seed=7)
    cuts = [len(body) * 35 // 100, len(body) * 70 // 100]
    with DroppingProxy(server.port, cuts) as proxy:
        # Plain: one PATCH for the whole file, cut twice mid-body: the server keeps what
        # arrived. With checksums: 1 MiB PATCHes; a cut one is discarded and sent again.
        location = tus_upload(
            proxy.url,
            path,
            session_id=session,
            chunk_size=1024 * 1024 if checksum else None,
            checksum=checksum,
        )
        assert proxy.cuts == 2
        assert proxy.sent > len(body)  # something was sent twice, but not everything
        assert proxy.sent < 2 * len(body)
    done = head(server.url, path_of(location))
    resumed_id = done.headers["Content-Location"].rsplit("/", 1)[1]
    resumed = file_row(server.url, resumed_id)
    single = file_row(server.url, single_shot(server.url, path, session)["id"])
    assert without_per_upload_fields(resumed) == without_per_upload_fields(single)
    assert resumed["row_count"] > 10_000  # the profile was computed, not left empty
    for file_id in (resumed_id, single["id"]):
        stored = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=60)
        assert stored.content == body


def test_a_dropped_patch_keeps_the_block_whose_write_was_in_flight(tmp_path: Path) -> None:
    """A PATCH cut off while its last full block is still being written (held at
    tus.appended), after a last piece that is refused (a NUL): the server waits for that
    write before it saves the offset, so the block is kept and the offset is the bytes
    held. The refused piece used to skip the wait: the rollback ran under the write, and
    the block the server had checked and written was dropped."""
    pause = 2.0  # far longer than the server takes to see the disconnect
    settings = Settings(data_dir=tmp_path / "data")
    server = ServerProcess(settings.data_dir, env={"CSVSTORE_PAUSE_AT": f"tus.appended:{pause}"})
    server.start()
    rows = b"".join(b"%d,row %d,%d.5\n" % (i, i, i * 7) for i in range(80_000))
    body = b"id,name,amount\n" + rows
    block = 1024 * 1024  # the server's chunk size: written in a thread, as blocks of 256 KiB up
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        location = create(server.url, len(body)).headers["Location"]
        part = settings.temp_dir / "tus" / f"{location.rsplit('/', 1)[1]}.part"
        sock = _raw_patch_start(server.port, location, 0, len(body), body[:block])
        try:
            deadline = time.monotonic() + 20
            while part.stat().st_size < block:  # written; its append held at tus.appended
                assert time.monotonic() < deadline, "the block was never written"
                time.sleep(0.01)
            sock.sendall(b"1,\x00\n")  # a last piece that is not CSV text
        finally:
            sock.close()  # the client goes away mid-body
        deadline = time.monotonic() + 20
        # A PATCH at a wrong offset: 423 while the cut one holds the upload, then 409.
        while (probe := patch(server.url, location, len(body), b"")).status_code == 423:
            assert time.monotonic() < deadline, "the cut PATCH never let go of the upload"
            time.sleep(0.05)
        assert probe.status_code == 409, probe.text
        offset = int(head(server.url, location).headers["Upload-Offset"])
        assert (offset, part.stat().st_size) == (block, block)
        done = patch(server.url, location, offset, body[offset:])
        assert done.status_code == 204, done.text
        stored = requests.get(f"{server.url}/api/csv/files/{file_id_of(done)}/content", timeout=30)
        assert stored.content == body
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()[-3000:]
    assert_uploads_match_rows(settings)


def test_stress_tuspy_through_two_disconnects_equals_single_shot(tmp_path: Path) -> None:
    """``make stress``: 1 GiB (CSVSTORE_TUS_STRESS_SIZE); ``make test``: a few MiB."""
    size = STRESS_SIZE
    settings = Settings(data_dir=tmp_path / "data")
    server = ServerProcess(settings.data_dir, "--max-upload-size", str(max(size * 2, 1 << 30)))
    path = tmp_path / "big.csv"
    _write_big_csv(path, size)
    digest = _sha256_file(path)
    server.start()
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "big"}, timeout=30)
        with DroppingProxy(server.port, [size // 3, size * 2 // 3]) as proxy:
            started = time.monotonic()
            location = tus_upload(
                proxy.url, path, session_id="big", chunk_size=64 * 1024 * 1024, retries=10
            )
            resumed_seconds = time.monotonic() - started
            assert proxy.cuts == 2
        upload_path = path_of(location)
        resumed_id = head(server.url, upload_path).headers["Content-Location"].rsplit("/", 1)[1]
        started = time.monotonic()
        single_id = single_shot(server.url, path, "big")["id"]
        single_seconds = time.monotonic() - started
        resumed, single = file_row(server.url, resumed_id), file_row(server.url, single_id)
        assert without_per_upload_fields(resumed) == without_per_upload_fields(single)
        assert resumed["sha256"] == digest
        assert resumed["file_size"] == size
        for file_id in (resumed_id, single_id):
            assert _sha256_file(settings.uploads_dir / f"{file_id}.csv") == digest
        assert partial_files(settings.data_dir) == [f"{upload_path.rsplit('/', 1)[1]}.json"]
    finally:
        server.stop()
    print(
        f"\ntus stress: {size} bytes through 2 cuts in {resumed_seconds:.1f} s "
        f"(single-shot: {single_seconds:.1f} s); byte-identical, same profile"
    )


def _write_big_csv(path: Path, size: int) -> None:
    """``size`` bytes exactly, written a block at a time (never held whole)."""
    header = b"id,name,amount,note,city\n"
    block = b"".join(
        f'{i},name {i},{i * 0.25:.2f},"note, {i}",Zürich\n'.encode() for i in range(20_000)
    )
    with path.open("wb") as out:
        out.write(header)
        written = len(header)
        while written + len(block) <= size:
            out.write(block)
            written += len(block)
        if size > written:  # one last line of filler to make the size exact
            out.write(b"x" * (size - written - 1) + b"\n")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# Expiry, restarts and kills


def test_abandoned_uploads_expire_and_are_swept(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--tus-expiry", "1.5", "--sweep-interval", "0.2")
    server.start()
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        created = create(server.url, 100)
        location = created.headers["Location"]
        expires = email.utils.parsedate_to_datetime(created.headers["Upload-Expires"])
        assert expires.timestamp() - time.time() < 3
        assert patch(server.url, location, 0, b"a,b\n").status_code == 204
        active = create(server.url, 100).headers["Location"]
        for _ in range(4):  # bytes arriving keep an upload alive
            time.sleep(0.5)
            offset = int(head(server.url, active).headers["Upload-Offset"])
            assert patch(server.url, active, offset, b"1,2\n").status_code == 204
        assert head(server.url, location).status_code == 404
        assert head(server.url, active).status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(partial_files(server.data_dir)) > 2:
            time.sleep(0.1)
        assert sorted(partial_files(server.data_dir)) == sorted(
            f"{active.rsplit('/', 1)[1]}{suffix}" for suffix in (".json", ".part")
        )
    finally:
        assert server.stop() == 0


def test_partial_uploads_survive_a_kill_and_the_startup_check(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    server = ServerProcess(settings.data_dir)
    server.start()
    body = b"id,v\n" + b"".join(f"{i},{i}\n".encode() for i in range(50_000))
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        location = create(server.url, len(body)).headers["Location"]
        assert patch(server.url, location, 0, body[:100_000]).status_code == 204
        # A PATCH cut off by the kill: its bytes were never acknowledged.
        sock = _raw_patch_start(server.port, location, 100_000, len(body) - 100_000, b"9" * 5000)
        time.sleep(0.3)
        server.kill()
        sock.close()
        tus_dir = settings.temp_dir / "tus"
        expired_id, broken_id, orphan_id = "e" * 32, "b" * 32, "c" * 32
        state = json.loads((tus_dir / f"{location.rsplit('/', 1)[1]}.json").read_bytes())
        (tus_dir / f"{expired_id}.json").write_text(
            json.dumps({**state, "id": expired_id, "offset": 0, "expires_at": time.time() - 1})
        )
        (tus_dir / f"{expired_id}.part").write_bytes(b"")
        (tus_dir / f"{broken_id}.json").write_text("{not json")
        (tus_dir / f"{broken_id}.part").write_bytes(b"a,b\n")
        (tus_dir / f"{orphan_id}.part").write_bytes(b"a,b\n")  # no state: unresumable
        (settings.temp_dir / "stale.csv.part").write_bytes(b"a single-shot upload's")
        server.start()
        upload_id = location.rsplit("/", 1)[1]
        assert partial_files(settings.data_dir) == [f"{upload_id}.json", f"{upload_id}.part"]
        assert not (settings.temp_dir / "stale.csv.part").exists()
        assert head(server.url, location).headers["Upload-Offset"] == "100000"
        done = patch(server.url, location, 100_000, body[100_000:])
        assert done.status_code == 204, done.text
        stored = requests.get(f"{server.url}/api/csv/files/{file_id_of(done)}/content", timeout=30)
        assert stored.content == body
        # The restarted process had no analysis of the first bytes: it read them again.
        assert f"{upload_id} complete: file {file_id_of(done)}; {len(body)} bytes re-read" in (
            server.log()
        )
    finally:
        server.stop()
    assert_uploads_match_rows(settings)


def test_tuspy_uploads_in_flight_survive_sigkills(tmp_path: Path) -> None:
    """The kill test for resumable uploads: tuspy clients keep uploading while the server
    is killed (SIGKILL) and restarted under them; every upload completes, byte-identical,
    and afterwards the uploads folder holds exactly the files the database lists."""
    settings = Settings(data_dir=tmp_path / "data")
    server = ServerProcess(settings.data_dir)
    server.start()
    requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "k"}, timeout=30)
    rng = random.Random(20261127)
    files = []
    for n in range(4):
        path = tmp_path / f"k{n}.csv"
        # large enough that every round's kill finds them in flight
        files.append((path, csv_file(path, rng.randrange(16, 25) * 1024 * 1024, seed=n)))
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def upload(n: int, path: Path) -> None:
        try:
            results[n] = tus_upload_through_restarts(
                server.url,
                path,
                session_id="k",
                chunk_size=256 * 1024,
                checksum=n % 2 == 1,
                retries=60,
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(n, path)) for n, (path, _) in enumerate(files)]
    kills_in_flight = 0
    try:
        for thread in threads:
            thread.start()
        for _ in range(KILL_ROUNDS):
            # Kill once the uploads have made some progress since the (re)start: a random
            # amount, mid-request more often than not.
            before = _partial_bytes(settings)
            wanted = rng.randrange(256 * 1024, 4 * 1024 * 1024)
            deadline = time.monotonic() + 30
            while _partial_bytes(settings) - before < wanted and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _partial_bytes(settings) > 0, "no upload was in flight at the kill"
            server.kill()
            kills_in_flight += 1
            time.sleep(0.3)
            server.start()
        for thread in threads:
            thread.join(timeout=240)
        assert not errors, errors
        assert sorted(results) == list(range(len(files)))
        for n, (_, body) in enumerate(files):
            probe = head(server.url, path_of(results[n]))
            assert probe.headers["Upload-Offset"] == str(len(body))
            file_id = probe.headers["Content-Location"].rsplit("/", 1)[1]
            assert (settings.uploads_dir / f"{file_id}.csv").read_bytes() == body
        # Uploads carried on across restarts: their completions re-read what an earlier
        # process had received.
        assert kills_in_flight == KILL_ROUNDS
        assert "bytes re-read and analysed" in server.log()
    finally:
        server.stop()
    assert_uploads_match_rows(settings)
    assert not [n for n in partial_files(settings.data_dir) if n.endswith(".part")]


def _partial_bytes(settings: Settings) -> int:
    directory = settings.temp_dir / "tus"
    total = 0
    for entry in directory.glob("*.part") if directory.exists() else []:
        with contextlib.suppress(FileNotFoundError):
            total += entry.stat().st_size
    return total


def test_api_keys_guard_the_tus_endpoint(tmp_path: Path) -> None:
    key, read_only = "k" * 20, "r" * 20
    server = ServerProcess(tmp_path / "data", "--api-keys", f"{key},ro:{read_only}")
    server.start()
    try:
        assert requests.options(f"{server.url}{TUS}", timeout=30).status_code == 204
        denied = requests.post(
            f"{server.url}{TUS}", headers={**V, "Upload-Length": "1"}, timeout=30
        )
        assert_problem(denied, 401)
        ro = {**V, "Authorization": f"Bearer {read_only}", "Upload-Length": "1"}
        assert_problem(requests.post(f"{server.url}{TUS}", headers=ro, timeout=30), 403)
        auth = {"Authorization": f"Bearer {key}"}
        requests.post(
            f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, headers=auth, timeout=30
        )
        client = tus_client.TusClient(f"{server.url}{TUS}", headers=auth)
        path = tmp_path / "a.csv"
        body = csv_file(path, 10_000)
        with path.open("rb") as stream:
            uploader = client.uploader(
                file_stream=stream, metadata={"session_id": "s1", "filename": "a.csv"}
            )
            uploader.upload()
        probe = requests.head(str(uploader.url), headers={**V, **auth}, timeout=30)
        assert probe.headers["Upload-Offset"] == str(len(body))
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("allowed", ["https://app.example", "*"])  # *: any origin
def test_browser_clients_get_cors_answers(tmp_path: Path, allowed: str) -> None:
    origin = "https://app.example"
    server = ServerProcess(tmp_path / "data", "--cors-origins", allowed)
    server.start()
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s1"}, timeout=30)
        preflight = {"Origin": origin, "Access-Control-Request-Headers": "tus-resumable"}
        create_pre = requests.options(
            f"{server.url}{TUS}",
            headers={**preflight, "Access-Control-Request-Method": "POST"},
            timeout=30,
        )
        assert create_pre.status_code == 204
        assert create_pre.headers["Access-Control-Allow-Origin"] == origin
        assert "Upload-Metadata" in create_pre.headers["Access-Control-Allow-Headers"]
        created = requests.post(
            f"{server.url}{TUS}",
            headers={
                **V,
                "Origin": origin,
                "Upload-Length": "8",
                "Upload-Metadata": metadata(session_id="s1", filename="a.csv"),
            },
            timeout=30,
        )
        assert created.status_code == 201
        assert created.headers["Access-Control-Allow-Origin"] == origin
        assert "Location" in created.headers["Access-Control-Expose-Headers"]
        location = created.headers["Location"]
        patch_pre = requests.options(
            f"{server.url}{location}",
            headers={**preflight, "Access-Control-Request-Method": "PATCH"},
            timeout=30,
        )
        assert patch_pre.headers["Access-Control-Allow-Origin"] == origin
        done = patch(server.url, location, 0, b"a,b\n1,2\n", Origin=origin)
        assert done.status_code == 204
        assert "Upload-Offset" in done.headers["Access-Control-Expose-Headers"]
        assert requests.options(f"{server.url}{TUS}", timeout=30).headers["Tus-Version"]
    finally:
        assert server.stop() == 0


def test_resumed_equals_single_shot_on_every_backend(settings: Settings, tmp_path: Path) -> None:
    """Through the ``settings`` fixture: SQLite and local files in ``make test``, PostgreSQL
    in ``make test-postgres``, PostgreSQL and S3 in ``make test-s3`` (where the partial
    upload is a multipart upload in the bucket: see also tests/test_tus_s3.py)."""
    server = ServerProcess(settings.data_dir)  # the fixture put the backends in the env
    path = tmp_path / "any.csv"
    body = csv_file(path, 7 * 1024 * 1024, seed=3)  # more than one S3 part
    server.start()
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "b"}, timeout=30)
        with DroppingProxy(server.port, [len(body) // 3, len(body) * 2 // 3]) as proxy:
            location = tus_upload(proxy.url, path, session_id="b", chunk_size=2 * 1024 * 1024)
            assert proxy.cuts == 2
        resumed_id = head(server.url, path_of(location)).headers["Content-Location"]
        resumed = file_row(server.url, resumed_id.rsplit("/", 1)[1])
        single = file_row(server.url, single_shot(server.url, path, "b")["id"])
        assert without_per_upload_fields(resumed) == without_per_upload_fields(single)
        for file_id in (resumed["id"], single["id"]):
            stored = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=60)
            assert stored.content == body
        assert not [n for n in partial_files(settings.data_dir) if n.endswith(".part")]
    finally:
        assert server.stop() == 0


def delete_session_under_uploads(
    url: str, port: int, session_id: str, body: bytes, *, in_flight: bytes = b"HTTP/1.1 204"
) -> list[str]:
    """Two uploads into the session, one idle at an offset, one with a PATCH in flight; the
    session deleted meanwhile; the PATCH then ends (``in_flight``: its answer). Both answer
    404 afterwards (HEAD, PATCH); their locations."""
    idle = create(url, len(body), session_id=session_id).headers["Location"]
    assert patch(url, idle, 0, body[: len(body) // 3]).status_code == 204
    busy = create(url, len(body), session_id=session_id).headers["Location"]
    half = len(body) // 2
    sock = _raw_patch_start(port, busy, 0, half, body[:1000])
    try:
        time.sleep(0.5)  # the PATCH holds its upload
        resp = requests.delete(f"{url}/api/csv/sessions/{session_id}", timeout=30)
        assert resp.status_code == 200, resp.text
        sock.sendall(body[1000:half])
        answer = b""
        while b"\r\n\r\n" not in answer:
            received = sock.recv(65536)
            assert received, answer
            answer += received
    finally:
        sock.close()
    assert answer.startswith(in_flight), answer
    for location in (idle, busy):
        assert head(url, location).status_code == 404
        assert_problem(patch(url, location, 0, body[:10]), 404)
    return [idle, busy]


def test_deleting_a_session_terminates_its_uploads(server: ServerProcess, session: str) -> None:
    """A session's resumable uploads in progress go with it: the delete removes the idle
    one, and the one a PATCH was writing goes at its next request (404, nothing left).
    Before, both stayed under tmp/tus/ until their expiry, and answered HEAD with 200."""
    body = b"id,v\n" + b"".join(f"{i},{i}\n".encode() for i in range(40_000))
    locations = delete_session_under_uploads(server.url, server.port, session, body)
    tus_dir = server.data_dir / "tmp" / "tus"
    left = {p.name for p in tus_dir.iterdir()} if tus_dir.exists() else set()
    for location in locations:
        upload_id = location.rsplit("/", 1)[1]
        assert not [name for name in left if name.startswith(upload_id)], left


def test_terminating_a_finished_upload_deletes_the_file_it_made(
    server: ServerProcess, session: str
) -> None:
    """tus's termination frees an upload's data, finished or not (tusd and @tus/server alike):
    after the 204 the URL is 404 and so is the file; a file found identical (dedupe) was
    another upload's, and stays."""
    small = b"a,b\n1,2\n"
    large = b"a,b\n" + b"".join(b"%d,x\n" % i for i in range(20_000))  # past the journal
    whole = requests.post(
        f"{server.url}{TUS}", data=small,
        headers={**V, "Upload-Length": str(len(small)), "Content-Type": OFFSET_STREAM,
                 "Upload-Metadata": metadata(session_id=session, filename="whole.csv")},
        timeout=30,
    )  # fmt: skip
    assert whole.status_code == 201, whole.text
    finished = [(whole.headers["Location"], file_id_of(whole))]
    for body in (b"c,d\n3,4\n", large):
        location = create(server.url, len(body), session_id=session).headers["Location"]
        done = patch(server.url, location, 0, body)
        assert done.status_code == 204, done.text
        finished.append((location, file_id_of(done)))
    duplicate = create(server.url, len(small), session_id=session, dedupe="true")
    location = duplicate.headers["Location"]
    done = patch(server.url, location, 0, small)
    assert done.status_code == 204, done.text
    assert file_id_of(done) == finished[0][1]  # the whole creation's file
    assert requests.delete(f"{server.url}{location}", headers=V, timeout=30).status_code == 204
    assert head(server.url, location).status_code == 404
    assert requests.get(f"{server.url}/api/csv/files/{finished[0][1]}", timeout=30).ok
    for location, file_id in finished:
        resp = requests.delete(f"{server.url}{location}", headers=V, timeout=30)
        assert resp.status_code == 204, resp.text
        assert head(server.url, location).status_code == 404
        assert_problem(patch(server.url, location, 0, b""), 404)
        assert_problem(requests.delete(f"{server.url}{location}", headers=V, timeout=30), 404)
        gone = requests.get(f"{server.url}/api/csv/files/{file_id}", timeout=30)
        assert gone.status_code == 404, file_id
    listed = requests.get(f"{server.url}/api/csv/sessions/{session}", timeout=30).json()
    assert listed["csv_files"] == []


def test_a_finished_upload_whose_file_was_deleted_is_404(
    server: ServerProcess, session: str
) -> None:
    body = b"a,b\n" + b"".join(b"%d,x\n" % i for i in range(20_000))
    location = create(server.url, len(body), session_id=session).headers["Location"]
    done = patch(server.url, location, 0, body)
    assert done.status_code == 204, done.text
    assert head(server.url, location).status_code == 200
    assert requests.delete(f"{server.url}/api/csv/files/{file_id_of(done)}", timeout=30).ok
    assert head(server.url, location).status_code == 404
