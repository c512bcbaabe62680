"""Error codes: every error has a status and a reason of its own, and problem documents
carry it as ``code`` and ``type``."""

from __future__ import annotations

import base64
import re
from dataclasses import replace

from csvstore.config import Settings
from csvstore.errors import CsvstoreError, error_classes
from csvstore.web.problems import all_reasons
from tests.conftest import MakeClient, assert_problem, csv_bytes, upload_form

TUS = "/api/csv/tus/"
V = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"
KEBAB = re.compile(r"[a-z]+(-[a-z]+)*")


def test_every_error_class_has_a_status_and_a_reason_of_its_own() -> None:
    classes = error_classes()
    assert len(classes) >= 20
    reasons = [cls.reason for cls in classes]
    assert len(set(reasons)) == len(reasons), sorted(reasons)
    for cls in classes:
        assert issubclass(cls, CsvstoreError)
        assert KEBAB.fullmatch(cls.reason), cls
        assert 400 <= cls.status <= 599, cls
    assert set(reasons) <= set(all_reasons())
    assert {"not-found", "method-not-allowed", "internal-error"} <= set(all_reasons())


async def _code(resp: object, status: int) -> str:
    body = await assert_problem(resp, status)  # type: ignore[arg-type]
    assert body["type"] == f"urn:csvstore:problem:{body['code']}"
    return str(body["code"])


def _tus_headers(length: int, session_id: str = "s1", **extra: str) -> dict[str, str]:
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"session_id": session_id, "filename": "data.csv"}.items()
    )
    return {**V, "Upload-Length": str(length), "Upload-Metadata": meta, **extra}


async def test_problems_name_what_was_wrong(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(replace(settings, max_upload_size=1000))
    sessions = "/api/csv/sessions"
    assert (await client.post(sessions, json={"session_id": "s1"})).status == 201
    # Both 400: only the code tells a duplicate from an invalid id.
    assert await _code(await client.post(sessions, json={"session_id": "s1"}), 400) == (
        "session-exists"
    )
    assert await _code(await client.post(sessions, json={"session_id": ".x"}), 400) == (
        "validation-failed"
    )
    assert await _code(await client.get(f"{sessions}/nobody"), 404) == "unknown-session"
    png = upload_form(b"\x89PNG\r\n\x1a\n" + bytes(20), filename="x.csv")
    assert await _code(await client.post("/api/csv/upload", data=png), 400) == "not-csv"
    big = upload_form(csv_bytes(200))
    assert await _code(await client.post("/api/csv/upload", data=big), 413) == "too-large"
    assert await _code(await client.get("/api/csv/nothing"), 404) == "not-found"
    assert await _code(await client.put(sessions), 405) == "method-not-allowed"

    created = await client.post(TUS, headers=_tus_headers(len(csv_bytes())))
    assert created.status == 201
    headers = {**V, "Upload-Offset": "5", "Content-Type": OFFSET_STREAM}
    conflict = await client.patch(created.headers["Location"], data=b"x", headers=headers)
    assert await _code(conflict, 409) == "offset-conflict"
    assert conflict.headers["Upload-Offset"] == "0"
