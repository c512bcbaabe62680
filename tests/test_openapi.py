"""The OpenAPI document: valid OpenAPI 3.1 (openapi-spec-validator), readable operationIds,
bearerAuth where keys are on, and the response headers it documents are the ones sent."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from csvstore.config import Settings
from csvstore.config_values import RateLimit
from csvstore.web.openapi import HEADERS, Documented, build_openapi
from tests.conftest import Client, MakeClient, csv_bytes, upload_form

KEY = "k" * 24
READ_KEY = "r" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
V = {"Tus-Resumable": "1.0.0"}
TUS = "/api/csv/tus/"
OFFSET_STREAM = "application/offset+octet-stream"
EVERYTHING = Documented(api_keys=True, rate_limit=True, upload_limit=True)


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }


@pytest.mark.parametrize(
    "documented", [Documented(), EVERYTHING, Documented(upload_limit=True)], ids=str
)
def test_the_document_is_valid_openapi(documented: Documented) -> None:
    spec = build_openapi(documented)
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises on any departure from the OpenAPI 3.1 schema


def test_operation_ids_read_well() -> None:
    ops = _operations(build_openapi())
    ids = [op["operationId"] for op in ops.values()]
    assert len(set(ids)) == len(ids), ids
    for (method, path), op in ops.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)+", op["operationId"]), (method, path)
        assert op["operationId"].startswith("tus_") == path.startswith(TUS), op["operationId"]
    assert ops["POST", TUS]["operationId"] == "tus_create_upload"
    assert ops["PATCH", TUS + "{upload_id}"]["operationId"] == "tus_append_to_upload"
    assert ops["POST", "/api/csv/upload"]["operationId"] == "upload_file"


def test_bearer_auth_is_documented_only_where_keys_are_on() -> None:
    open_spec = build_openapi(Documented())
    assert "securitySchemes" not in open_spec.get("components", {})
    for op in _operations(open_spec).values():
        assert "security" not in op
        assert "401" not in op["responses"]
        # Queries answer 429 at --query-concurrency whatever the other limits.
        assert ("429" in op["responses"]) == (op["tags"] == ["query"])

    spec = build_openapi(Documented(api_keys=True))
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: Authorization: Bearer <key>",
    }
    for (method, path), op in _operations(spec).items():
        if method == "OPTIONS":  # tus discovery and CORS preflights need no key
            assert "security" not in op
            continue
        assert op["security"] == [{"bearerAuth": []}], (method, path)
        assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"]
        # A query is a POST that only reads: read-only keys may send it.
        read = method in {"GET", "HEAD"} or path.endswith("/query")
        assert ("403" in op["responses"]) == (not read), (method, path)


def test_limits_document_429_with_retry_after() -> None:
    uploads_only = _operations(build_openapi(Documented(upload_limit=True)))
    with_429 = {
        key
        for key, op in uploads_only.items()
        if "429" in op["responses"] and op["tags"] != ["query"]
    }
    assert with_429 == {
        ("POST", "/api/csv/upload"),
        ("POST", TUS),
        ("PATCH", TUS + "{upload_id}"),
    }
    for op in _operations(build_openapi(EVERYTHING)).values():
        retry = op["responses"]["429"]["headers"]["Retry-After"]
        assert retry["required"]
        assert retry["schema"]["type"] == "integer"


async def test_served_document_follows_the_settings(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, api_keys=KEY, rate_limit=RateLimit(100, 1.0)))
    spec = await (await client.get("/openapi.json")).json()
    validate(spec)
    assert "bearerAuth" in spec["components"]["securitySchemes"]
    assert "429" in spec["paths"]["/api/csv/sessions"]["get"]["responses"]


class HeaderCheck:
    """Each answer against the document: the required headers of its status are sent, and
    every header of HEADERS it sends is documented for that status."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.ops = _operations(spec)
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, resp: aiohttp.ClientResponse, method: str, path: str) -> None:
        documented = self.ops[method, path]["responses"].get(str(resp.status))
        assert documented is not None, f"{method} {path}: {resp.status} is not documented"
        headers = documented.get("headers", {})
        for name, header in headers.items():
            if header["required"]:
                assert name in resp.headers, f"{method} {path} {resp.status}: no {name}"
        for name in HEADERS:
            if name in resp.headers:
                assert name in headers, f"{method} {path} {resp.status}: {name} undocumented"
        self.seen.add((method, path, resp.status))


def _meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def test_documented_headers_are_the_ones_sent(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(
        replace(settings, api_keys=f"{KEY},ro:{READ_KEY}", max_concurrent_uploads=4)
    )
    check = HeaderCheck(await (await client.get("/openapi.json")).json())
    await _walk_the_api(client, check)
    content, tus_upload = "/api/csv/files/{file_id}/content", TUS + "{upload_id}"
    assert {
        ("GET", "/api/csv/sessions", 401),
        ("POST", "/api/csv/sessions", 403),
        ("POST", "/api/csv/upload", 200),
        *(("GET", content, status) for status in (200, 206, 304, 416)),
        ("OPTIONS", TUS, 204),
        *(("HEAD", tus_upload, status) for status in (200, 412)),
        *(("PATCH", tus_upload, status) for status in (204, 409, 460)),
    } <= check.seen
    assert len(check.seen) == 27

    limited = await make_client(replace(settings, rate_limit=RateLimit(1, 60.0)))
    check = HeaderCheck(await (await limited.get("/openapi.json")).json())
    for status in (200, 429):
        resp = await limited.get("/api/csv/sessions")
        assert resp.status == status
        check(resp, "GET", "/api/csv/sessions")


async def _walk_the_api(client: Client, check: HeaderCheck) -> None:
    sessions, session = "/api/csv/sessions", "/api/csv/sessions/{session_id}"
    file, content = "/api/csv/files/{file_id}", "/api/csv/files/{file_id}/content"
    upload, tus_upload = "/api/csv/upload", TUS + "{upload_id}"

    async def call(method: str, path: str, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
        kwargs["headers"] = {**AUTH, **kwargs.get("headers", {})}
        resp = await client.request(method, url, **kwargs)
        await resp.read()
        check(resp, method, path)
        return resp

    for name in ("a", "b"):
        await call("POST", sessions, sessions, json={"session_id": name})
    assert "Link" in (await call("GET", sessions, f"{sessions}?limit=1")).headers
    await call("GET", session, f"{sessions}/a")
    await call("GET", session, f"{sessions}/nobody")
    await call("GET", sessions, sessions, headers={"Authorization": "Bearer wrong-key-123456"})
    await call("POST", sessions, sessions, json={"session_id": "c"}, headers=_bearer(READ_KEY))

    data = csv_bytes(20)
    stored = await call("POST", upload, upload, data=upload_form(data, session_id="a"))
    file_id = (await stored.json())["file"]["id"]
    form = upload_form(data, session_id="a")
    form.add_field("dedupe", "true")
    assert (await call("POST", upload, upload, data=form)).status == 200
    await call("POST", upload, upload, data=upload_form(b"\x89PNG\r\n\x1a\n", session_id="a"))
    await call("GET", file, f"/api/csv/files/{file_id}")
    url = f"/api/csv/files/{file_id}/content"
    etag = (await call("GET", content, url)).headers["ETag"]
    assert (await call("GET", content, url, headers={"Range": "bytes=0-9"})).status == 206
    assert (await call("GET", content, url, headers={"If-None-Match": etag})).status == 304
    assert (await call("GET", content, url, headers={"Range": "bytes=99999-"})).status == 416
    await call("GET", file + "/rows", f"/api/csv/files/{file_id}/rows?limit=2")
    await call("GET", session + "/archive", f"{sessions}/a/archive")

    await call("OPTIONS", TUS, TUS)
    length = len(data)
    tus_headers = {**V, "Upload-Length": str(length), "Upload-Metadata": _meta(
        session_id="b", filename="t.csv"
    )}  # fmt: skip
    created = await call("POST", TUS, TUS, headers=tus_headers)
    location = created.headers["Location"]
    await call("HEAD", tus_upload, location, headers=V)
    await call("HEAD", tus_upload, location)  # no Tus-Resumable: 412
    patch = {**V, "Content-Type": OFFSET_STREAM}
    await call(
        "PATCH", tus_upload, location, data=data[:10], headers={**patch, "Upload-Offset": "0"}
    )
    await call("PATCH", tus_upload, location, data=b"x", headers={**patch, "Upload-Offset": "3"})
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    bad_sum = {**patch, "Upload-Offset": "10", "Upload-Checksum": f"sha256 {wrong}"}
    assert (
        await call("PATCH", tus_upload, location, data=data[10:], headers=bad_sum)
    ).status == 460
    rest = {**patch, "Upload-Offset": "10"}
    done = await call("PATCH", tus_upload, location, data=data[10:], headers=rest)
    assert "Content-Location" in done.headers
    await call("HEAD", tus_upload, location, headers=V)
    other = await call("POST", TUS, TUS, headers=tus_headers)
    await call("DELETE", tus_upload, other.headers["Location"], headers=V)
    await call("DELETE", tus_upload, other.headers["Location"], headers=V)  # 404

    await call("DELETE", file, f"/api/csv/files/{file_id}")
    await call("DELETE", session, f"{sessions}/a")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
