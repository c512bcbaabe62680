"""Every crash point an S3 path passes, walked one by one on the real server with S3
(SeaweedFS) and PostgreSQL, as tests/test_crash_points.py walks them on local storage.

For each point: a server armed with ``CSVSTORE_CRASH_AT`` runs the operation that passes it
and is SIGKILLed there; a clean server then starts on the same bucket prefix and database,
and the invariants are checked: every acknowledged upload is listed and byte-identical, an
unacknowledged one is absent or listed and byte-identical, a tus upload is complete or
resumable from the offset its client was last told (one whose session was deleted answers
404 and leaves nothing), ``csvstore check`` exits 0, and the bucket holds exactly the files
the database lists, no intent, no tail segment, and no multipart upload but a tus upload's
that is still in progress.

Runs under ``make test-s3``; skipped elsewhere (the ``s3_settings`` fixture).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests

from csvstore.config import Settings
from csvstore.config_values import MiB
from csvstore.crashpoints import POINTS, S3_POINTS
from csvstore.storage.local import STORE_MARKER
from tests import s3util
from tests.conftest import listed_file_paths, run_async
from tests.serverproc import ServerProcess
from tests.test_crash_points import (
    SESSION,
    TUS,
    TUS_HEADERS,
    Ledger,
    Resumable,
    _body,
    _check,
    _content,
    _create_session,
    _delete_first,
    _died_at,
    _files,
    _meta,
    _patch,
    _post,
)

SMALL = 2_000  # one PutObject
LARGE = 6 * MiB  # a multipart upload (the suite's part size is 5 MiB)
TUS_SIZE = 12 * MiB  # the first PATCH: a whole part and a tail segment
# The armed server's tus leases lapse this soon after it dies (the next request waits).
LEASE = "2"


@dataclass
class S3Ledger(Ledger):
    gone: list[Resumable] = field(default_factory=list)  # tus uploads whose session went


def small(url: str, ledger: S3Ledger) -> None:
    _post(url, ledger, SMALL)


def large(url: str, ledger: S3Ledger) -> None:
    _post(url, ledger, LARGE)


def _create_tus(url: str, ledger: S3Ledger, body: bytes, name: str) -> Resumable | None:
    try:
        created = requests.post(
            f"{url}{TUS}",
            headers={
                **TUS_HEADERS,
                "Upload-Length": str(len(body)),
                "Upload-Metadata": _meta(session_id=SESSION, filename=name),
            },
            timeout=30,
        )
    except requests.ConnectionError:
        return None  # the client never learnt of it
    assert created.status_code == 201, created.text
    upload = Resumable(name, body, created.headers["Location"], told=0)
    ledger.resumable.append(upload)
    return upload


def _tus(url: str, ledger: S3Ledger, size: int, *, stop_at: int | None = None) -> None:
    """Create, send half, then the rest (or stop at ``stop_at``); stops where it died."""
    body = _body(size, 1000 + len(ledger.resumable))
    upload = _create_tus(url, ledger, body, f"t{len(ledger.resumable)}-{uuid.uuid4().hex[:6]}.csv")
    if upload is None:
        return
    _send(url, upload, [size // 2, len(body)] if stop_at is None else [stop_at])


def _send(url: str, upload: Resumable, ends: list[int]) -> None:
    for end in ends:
        try:
            resp = _patch(url + upload.url, upload.body[upload.told : end], upload.told)
        except requests.ConnectionError:
            return
        assert resp.status_code == 204, resp.text
        upload.told = int(resp.headers["Upload-Offset"])
    upload.done = upload.told == len(upload.body)


def tus_upload(url: str, ledger: S3Ledger) -> None:
    """The first PATCH leaves a whole part and a tail segment."""
    _tus(url, ledger, TUS_SIZE)


def tus_small(url: str, ledger: S3Ledger) -> None:
    """No whole part: completed by one PUT, its multipart upload aborted."""
    _tus(url, ledger, 300_000)


def tus_first_half(url: str, ledger: S3Ledger) -> None:
    _tus(url, ledger, TUS_SIZE, stop_at=TUS_SIZE // 2)


def tus_rest(url: str, ledger: S3Ledger) -> None:
    """The rest of an upload another process began: this one has none of its analysis, so
    it completes the object first and reads it back, before the publish."""
    _send(url, ledger.resumable[-1], [TUS_SIZE])


def delete_file(url: str, ledger: S3Ledger) -> None:
    _delete_first(url, ledger)


def delete_session(url: str, ledger: S3Ledger) -> None:
    _delete_first(url, ledger, session=True)


def delete_session_with_tus(url: str, ledger: S3Ledger) -> None:
    """A session with a tus upload in progress (a part and a tail), deleted."""
    body = _body(TUS_SIZE, 2000)
    upload = _create_tus(url, ledger, body, "in-progress.csv")
    assert upload is not None
    resp = _patch(url + upload.url, body[: TUS_SIZE // 2], 0)
    assert resp.status_code == 204, resp.text
    upload.told = TUS_SIZE // 2
    ledger.resumable.remove(upload)
    ledger.gone.append(upload)
    _delete_first(url, ledger, session=True)


Scenario = Callable[[str, S3Ledger], None]

# (point, scenario, what a clean server does first): every point an S3 path passes.
COMPLETION = (
    *[p for p in POINTS if p.startswith("publish.")],
    "tus.publishing_saved",
    "tus.row_committed",
    *S3_POINTS[1:],
)
CASES: list[tuple[str, Scenario, Scenario | None]] = [
    *[(p, s, None) for p in POINTS if p.startswith("publish.") for s in (small, large)],
    *[(p, tus_upload, None) for p in ("tus.checkpoint_synced", S3_POINTS[0], *COMPLETION)],
    *[(p, tus_rest, tus_first_half) for p in COMPLETION],
    ("tus.s3_object_completed", tus_small, None),
    ("delete.row_removed", delete_file, None),
    ("delete.row_removed", delete_session, None),
    ("delete.row_removed", delete_session_with_tus, None),
]
# Local storage only: the temp file's fsync and rename, the journal (S3 objects are durable
# once written), the local tus data file's append, link and removal.
LOCAL_ONLY = (
    "storage.file_synced",
    "storage.renamed",
    "storage.journal_written",
    "tus.appended",
    "tus.linked",
    "tus.finished",
    "tus.whole_published",
    "flush.synced",
    "restore.file_written",
)
CHECK_POINTS = ("check.orphan_removed", "check.intent_cleared")
# Walked by their own tests, on S3 too: migrate-to's copy (tests/test_migrate.py).
ELSEWHERE = ("migrate.bytes_copied",)


def test_every_s3_point_is_walked() -> None:
    walked = {case[0] for case in CASES} | set(CHECK_POINTS)
    assert walked | set(LOCAL_ONLY) | set(ELSEWHERE) == set(POINTS) | set(S3_POINTS)
    assert set(S3_POINTS) <= walked


async def _intents(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM upload_intents"))
    finally:
        await conn.close()


def _armed(settings: Settings, point: str) -> ServerProcess:
    return ServerProcess(settings.data_dir, "--tus-lease", LEASE, env={"CSVSTORE_CRASH_AT": point})


def _resume(url: str, upload: Resumable) -> requests.Response:
    """The rest of the upload from its offset, once the dead server's lease has lapsed."""
    deadline = time.monotonic() + 30
    while True:
        resp = _patch(url + upload.url, upload.body[upload.told :], upload.told)
        if resp.status_code != 423 or time.monotonic() > deadline:
            return resp
        time.sleep(0.2)


def _verify(settings: Settings, ledger: S3Ledger) -> None:
    """The invariants, on a clean server over the same bucket prefix and database, then
    ``check``, then the bucket itself."""
    server = ServerProcess(settings.data_dir)
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
            head = requests.head(server.url + upload.url, headers=TUS_HEADERS, timeout=30)
            assert head.status_code == 200, f"{upload.name}: HEAD {head.status_code}"
            offset = int(head.headers["Upload-Offset"])
            if offset < len(upload.body):
                # Resumable from where the client was told, never from anywhere else.
                assert offset == upload.told, (upload.name, offset, upload.told)
                assert not upload.done
                resp = _resume(server.url, upload)
                if resp.status_code == 409:  # an interrupted completion, settled as complete
                    assert int(resp.headers["Upload-Offset"]) == len(upload.body), resp.text
                else:
                    assert resp.status_code == 204, resp.text
            listed = _files(server.url)
            assert upload.name in listed, f"{upload.name}: complete, but not listed"
            assert _content(server.url, listed[upload.name]) == upload.body
        for upload in ledger.gone:
            head = requests.head(server.url + upload.url, headers=TUS_HEADERS, timeout=30)
            assert head.status_code == 404, f"{upload.name}: its session is gone, HEAD {head}"
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    report = _check(settings.data_dir)
    assert report.returncode == 0, report.stdout + report.stderr
    objects, uploads = s3util.listing(settings)
    stored = {n for n in objects if not n.startswith("tus/")} - {STORE_MARKER}
    assert stored == listed_file_paths(settings), report.stdout
    assert run_async(_intents(settings.database_url)) == 0
    tails = [n for n in objects if n.startswith("tus/") and ".tail." in n]
    assert tails == [], f"tail segments of no upload in progress: {tails}"
    for name in uploads:
        # Only a tus upload still in progress may have one (here: one whose creation was
        # cut off before its client learnt of it; it expires).
        record = f"tus/{uuid.UUID(name.removesuffix('.csv')).hex}.json"
        assert record in objects, f"multipart upload {name} of no tus upload"
        for upload in ledger.resumable + ledger.gone:
            assert not upload.url.endswith(record[4:-5]), f"{name}: of a finished upload"


@pytest.mark.parametrize(
    ("point", "scenario", "before"),
    CASES,
    ids=[f"{point}-{scenario.__name__}" for point, scenario, _ in CASES],
)
def test_crash_point_on_s3(
    s3_settings: Settings, point: str, scenario: Scenario, before: Scenario | None
) -> None:
    if not s3_settings.uses_postgres:
        pytest.skip("S3 with PostgreSQL (make test-s3)")
    ledger = S3Ledger()
    setup = ServerProcess(s3_settings.data_dir)
    setup.start()
    _create_session(setup.url)
    if before is not None:
        before(setup.url, ledger)
    assert setup.stop() == 0
    server = _armed(s3_settings, point)
    server.start()
    scenario(server.url, ledger)
    _died_at(server, point)
    _verify(s3_settings, ledger)


@pytest.mark.parametrize("point", CHECK_POINTS)
def test_crash_during_check_on_s3(s3_settings: Settings, point: str) -> None:
    if not s3_settings.uses_postgres:
        pytest.skip("S3 with PostgreSQL (make test-s3)")
    ledger = S3Ledger()
    setup = ServerProcess(s3_settings.data_dir)
    setup.start()
    _create_session(setup.url)
    large(setup.url, ledger)
    assert setup.stop() == 0
    # Two publishes that die before their rows: orphans with intents of a dead process.
    for scenario in (small, large):
        server = _armed(s3_settings, "publish.bytes_published")
        server.start()
        scenario(server.url, ledger)
        _died_at(server, "publish.bytes_published")
    report = _check(s3_settings.data_dir, env={"CSVSTORE_CRASH_AT": point})
    assert report.returncode == -9, report.stdout + report.stderr
    again = _check(s3_settings.data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cleared" in again.stdout
    _verify(s3_settings, ledger)
