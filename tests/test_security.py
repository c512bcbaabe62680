"""API keys, read-only keys, the bind-address guard, security headers and CORS."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from csvstore.commandline import settings_from
from csvstore.config import Settings
from csvstore.web.security import parse_key_spec
from tests.conftest import Client, MakeClient, assert_problem, csv_bytes, upload_form

KEY = "k" * 24
READ_KEY = "r" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}


@pytest.fixture
async def locked(make_client: MakeClient, settings: Settings, tmp_path: Path) -> Client:
    keys_file = tmp_path / "keys"
    hashed = hashlib.sha256(READ_KEY.encode()).hexdigest()
    keys_file.write_text(f"# the data tools' key, stored hashed\nro:sha256:{hashed}\n")
    return await make_client(replace(settings, api_keys=KEY, api_keys_file=keys_file))


async def test_without_a_key_every_api_route_is_401(locked: Client) -> None:
    for method, path in [
        ("GET", "/api/csv/sessions"),
        ("POST", "/api/csv/sessions"),
        ("GET", "/api/csv/sessions/x"),
        ("POST", "/api/csv/upload"),
        ("DELETE", "/api/csv/files/x"),
        ("GET", "/api/csv/files/x/content"),
    ]:
        resp = await locked.request(method, path)
        body = await assert_problem(resp, 401)
        assert "Bearer" in body["detail"]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = await locked.get("/api/csv/sessions", headers={"Authorization": "Bearer nope"})
    await assert_problem(wrong, 401)
    basic = await locked.get("/api/csv/sessions", headers={"Authorization": f"Basic {KEY}"})
    await assert_problem(basic, 401)


async def test_docs_stay_open(locked: Client) -> None:
    assert (await locked.get("/docs")).status == 200
    assert (await locked.get("/openapi.json")).status == 200


async def test_a_valid_key_works_end_to_end(locked: Client) -> None:
    resp = await locked.post("/api/csv/sessions", json={"session_id": "s1"}, headers=AUTH)
    assert resp.status == 201
    up = await locked.post("/api/csv/upload", data=upload_form(csv_bytes()), headers=AUTH)
    assert up.status == 201
    assert (await locked.get("/api/csv/sessions/s1", headers=AUTH)).status == 200


async def test_read_only_keys_may_only_read(locked: Client) -> None:
    await locked.post("/api/csv/sessions", json={"session_id": "s1"}, headers=AUTH)
    assert (await locked.get("/api/csv/sessions/s1", headers=READ)).status == 200
    assert (await locked.head("/api/csv/sessions/s1", headers=READ)).status == 200
    for method, path in [("POST", "/api/csv/sessions"), ("DELETE", "/api/csv/sessions/s1")]:
        body = await assert_problem(await locked.request(method, path, headers=READ), 403)
        assert "read-only" in body["detail"]
    assert (await locked.get("/api/csv/sessions/s1", headers=AUTH)).status == 200


def test_key_specs() -> None:
    assert parse_key_spec("ro:" + "x" * 20).read_only
    hashed = parse_key_spec("sha256:" + "ab" * 32)
    assert hashed.digest == bytes.fromhex("ab" * 32)
    for bad in ("short", "sha256:zz", "sha256:abcd"):
        with pytest.raises(ValueError, match="key"):
            parse_key_spec(bad)


def test_public_bind_without_keys_is_refused() -> None:
    with pytest.raises(SystemExit):
        settings_from(["--host", "0.0.0.0"], {})
    assert settings_from(["--host", "0.0.0.0", "--insecure"], {}).insecure
    assert settings_from(["--host", "0.0.0.0", "--api-keys", KEY], {}).host == "0.0.0.0"
    assert settings_from(["--host", "::1"], {}).host == "::1"


def test_a_keys_file_with_no_key_is_refused_not_an_open_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# the keys go here\n\n")
    with pytest.raises(SystemExit) as stop:
        settings_from(["--api-keys-file", str(empty)], {})
    assert stop.value.code == 2
    assert f"--api-keys-file {empty} holds no key" in capsys.readouterr().err


async def test_security_headers_on_every_response(client: Client) -> None:
    for resp in [
        await client.get("/api/csv/sessions"),
        await client.get("/api/csv/sessions/missing"),
        await client.get("/docs"),
        await client.get("/nowhere"),
    ]:
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_cors_is_off_by_default(client: Client) -> None:
    resp = await client.get("/api/csv/sessions", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_allow_list(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(replace(settings, cors_origins="https://app.example"))
    allowed = await client.get("/api/csv/sessions", headers={"Origin": "https://app.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Link" in allowed.headers["Access-Control-Expose-Headers"]
    other = await client.get("/api/csv/sessions", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    # The answer depends on Origin: a shared cache must not hand one origin's to another.
    for resp in (allowed, other, await client.get("/api/csv/sessions")):
        assert [v.strip() for v in resp.headers["Vary"].split(",")].count("Origin") == 1
    preflight = await client.options(
        "/api/csv/upload",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert preflight.status == 200
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
