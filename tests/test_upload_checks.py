"""The checks both upload paths share (csvstore/uploads.py): the multipart form and tus
refuse alike, through the real app."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace

import pytest

from csvstore.config import Settings
from tests.conftest import MakeClient, assert_problem, upload_form

TUS = {"Tus-Resumable": "1.0.0"}
DATA = b"a,b\n1,2\n"


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


@pytest.mark.local_storage
async def test_short_disk_is_the_same_507_on_both_paths(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, min_free_space=1 << 60))
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    multipart = await client.post("/api/csv/upload", data=upload_form(DATA))
    tus = await client.post(
        "/api/csv/tus/",
        headers={
            **TUS,
            "Upload-Length": str(len(DATA)),
            "Upload-Metadata": _metadata(session_id="s1", filename="x.csv"),
        },
    )
    details = [(await assert_problem(reply, 507))["detail"] for reply in (multipart, tus)]
    assert details[0] == details[1]
    assert details[0].startswith("not enough free disk space on the server")
    assert multipart.headers["Retry-After"] == tus.headers["Retry-After"] == "60"


async def test_a_wrong_sha256_is_refused_alike_on_both_paths(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.post("/api/csv/sessions", json={"session_id": "s1"})).status == 201
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    form = upload_form(DATA)
    form.add_field("sha256", wrong)
    multipart = await client.post("/api/csv/upload", data=form)
    tus = await client.post(
        "/api/csv/tus/",
        data=DATA,
        headers={
            **TUS,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Length": str(len(DATA)),
            "Upload-Metadata": _metadata(session_id="s1", filename="x.csv", sha256=wrong),
        },
    )
    got = hashlib.sha256(DATA).hexdigest()
    for reply, source in ((multipart, "the sha256 form field"), (tus, "Upload-Metadata")):
        detail = (await assert_problem(reply, 400))["detail"]
        assert detail == (
            f"sha256 mismatch: {source} says {wrong} but the received file has {got}; "
            "nothing was stored"
        )
    listed = await (await client.get("/api/csv/sessions/s1")).json()
    assert listed["csv_files"] == []
