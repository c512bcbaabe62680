"""--rate-limit and --max-concurrent-uploads: per API key, per client address without keys,
429 problem+json with Retry-After, and never a 429 for a client within the limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from csvstore.commandline import settings_from
from csvstore.config import Settings
from csvstore.config_values import RateLimit, parse_rate_limit
from csvstore.web.limits import TokenBuckets
from tests.conftest import (
    BOUNDARY,
    MakeClient,
    assert_problem,
    csv_bytes,
    upload_form,
)

SESSIONS = "/api/csv/sessions"
KEY_A = "a" * 24
KEY_B = "b" * 24
READ_KEY = "r" * 24


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_rate_limit_setting() -> None:
    assert parse_rate_limit("10") == RateLimit(10, 1.0)
    assert parse_rate_limit("10/s") == RateLimit(10, 1.0)
    assert parse_rate_limit(" 600/M ") == RateLimit(600, 60.0)
    assert parse_rate_limit("5000/h") == RateLimit(5000, 3600.0)
    assert parse_rate_limit("0") is None
    for bad in ("", "ten", "10/d", "-1/s", "1.5/s", "10/", "²/s"):
        with pytest.raises(ValueError, match="not a rate"):
            parse_rate_limit(bad)
    chosen = settings_from(["--rate-limit", "20/m", "--max-concurrent-uploads", "2"], {})
    assert chosen.rate_limit == RateLimit(20, 60.0)
    assert chosen.max_concurrent_uploads == 2
    from_env = settings_from([], {"CSVSTORE_RATE_LIMIT": "3/s"})
    assert from_env.rate_limit == RateLimit(3, 1.0)
    with pytest.raises(SystemExit):
        settings_from(["--max-concurrent-uploads", "-1"], {})


async def test_past_the_rate_a_429_says_when_to_come_back(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, rate_limit=RateLimit(3, 1.0)))
    for _ in range(3):
        assert (await client.get(SESSIONS)).status == 200
    refused = await client.get(SESSIONS)
    body = await assert_problem(refused, 429)
    assert body["code"] == "rate-limited"
    assert "at most 3 per second" in body["detail"]
    assert refused.headers["Retry-After"] == "1"
    # Outside /api (probes, metrics, the page, the docs) nothing is counted.
    for path in ("/healthz", "/metrics", "/openapi.json", "/"):
        assert (await client.get(path)).status == 200, path
    await asyncio.sleep(1.0)  # as Retry-After said
    assert (await client.get(SESSIONS)).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'csvstore_http_requests_total{method="GET",route="/api/csv/sessions",status="429"}' in (
        metrics
    )


async def test_a_client_within_the_rate_never_sees_a_429(
    make_client: MakeClient, settings: Settings
) -> None:
    """Bursts of the whole allowance once per period, and a steady stream at the rate."""
    client = await make_client(replace(settings, rate_limit=RateLimit(20, 1.0)))
    statuses: list[int] = []
    for _ in range(3):
        burst = await asyncio.gather(*(client.get(SESSIONS) for _ in range(20)))
        statuses += [r.status for r in burst]
        # from the last answer, so that a period separates the two bursts' arrivals
        await asyncio.sleep(1.02)
    for _ in range(40):
        statuses.append((await client.get(SESSIONS)).status)
        await asyncio.sleep(0.05)
    assert statuses == [200] * 100


async def test_each_key_has_its_own_allowance(make_client: MakeClient, settings: Settings) -> None:
    keys = ",".join([KEY_A, KEY_B, f"ro:{READ_KEY}"])
    client = await make_client(replace(settings, api_keys=keys, rate_limit=RateLimit(2, 60.0)))
    for _ in range(2):
        assert (await client.get(SESSIONS, headers=bearer(KEY_A))).status == 200
    body = await assert_problem(await client.get(SESSIONS, headers=bearer(KEY_A)), 429)
    assert "per minute" in body["detail"]
    # The same client address with another key, or a read-only key, is another client.
    for key in (KEY_B, READ_KEY):
        for _ in range(2):
            assert (await client.get(SESSIONS, headers=bearer(key))).status == 200
    # A key spelled otherwise is the same key; no key at all is refused before it counts.
    spelled = {"Authorization": f"bearer   {KEY_A}  "}
    await assert_problem(await client.get(SESSIONS, headers=spelled), 429)
    for _ in range(5):
        await assert_problem(await client.get(SESSIONS), 401)


async def test_without_keys_each_client_address_has_its_own_allowance(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, rate_limit=RateLimit(2, 60.0)))
    url = str(client.make_url(SESSIONS))

    async def statuses(source: str, count: int) -> list[int]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            found = []
            for _ in range(count):
                async with http.get(url) as resp:
                    found.append(resp.status)
                    if resp.status == 429:
                        assert resp.headers["Retry-After"] in {"30", "31"}
            return found

    assert await statuses("127.0.0.1", 3) == [200, 200, 429]
    assert await statuses("127.0.0.2", 3) == [200, 200, 429]  # another address: its own
    assert await statuses("127.0.0.1", 1) == [429]


async def _held_upload(release: asyncio.Event, rows: bytes) -> AsyncIterator[bytes]:
    """A multipart upload that sends its first part, then waits before the file's bytes."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="session_id"\r\n\r\ns1\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        'filename="held.csv"\r\nContent-Type: text/csv\r\n\r\n'
    ).encode()
    await release.wait()
    yield rows + f"\r\n--{BOUNDARY}--\r\n".encode()


async def test_uploads_in_progress_are_limited_per_client(
    make_client: MakeClient, settings: Settings
) -> None:
    keys = f"{KEY_A},{KEY_B}"
    client = await make_client(replace(settings, api_keys=keys, max_concurrent_uploads=1))
    assert (await client.post(SESSIONS, json={"session_id": "s1"}, headers=bearer(KEY_A))).status
    release = asyncio.Event()
    headers = {**bearer(KEY_A), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    held = asyncio.create_task(
        client.post("/api/csv/upload", data=_held_upload(release, csv_bytes()), headers=headers)
    )
    await asyncio.sleep(0.3)  # the held upload is in the handler
    assert not held.done()
    second = await client.post(
        "/api/csv/upload", data=upload_form(csv_bytes()), headers=bearer(KEY_A)
    )
    body = await assert_problem(second, 429)
    assert "uploads in progress" in body["detail"]
    assert second.headers["Retry-After"] == "1"
    tus = await client.post(
        "/api/csv/tus/",
        headers={**bearer(KEY_A), "Tus-Resumable": "1.0.0", "Upload-Length": "10"},
    )
    await assert_problem(tus, 429)  # a tus creation is an upload too
    bare = await client.post(
        "/api/csv/tus",
        headers={**bearer(KEY_A), "Tus-Resumable": "1.0.0", "Upload-Length": "10"},
    )
    await assert_problem(bare, 429)  # also at the root without its slash
    # Reading is not an upload; another key's upload is its own.
    assert (await client.get(f"{SESSIONS}/s1", headers=bearer(KEY_A))).status == 200
    other = await client.post(
        "/api/csv/upload", data=upload_form(csv_bytes()), headers=bearer(KEY_B)
    )
    assert other.status == 201
    release.set()
    assert (await held).status == 201
    # The slot is given back, also by an upload that failed.
    refused = await client.post(
        "/api/csv/upload", data=upload_form(b"\x89PNG\r\n\x1a\n"), headers=bearer(KEY_A)
    )
    await assert_problem(refused, 400)
    again = await client.post(
        "/api/csv/upload", data=upload_form(csv_bytes()), headers=bearer(KEY_A)
    )
    assert again.status == 201
    metrics = await (await client.get("/metrics")).text()
    # the multipart, the tus creation and the one at the bare root
    assert 'csvstore_uploads_rejected_total{reason="rate_limited"} 3.0' in metrics


async def test_a_client_within_the_upload_limit_never_sees_a_429(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(replace(settings, max_concurrent_uploads=3))
    await client.post(SESSIONS, json={"session_id": "s1"})
    for _ in range(4):
        sent = await asyncio.gather(
            *(client.post("/api/csv/upload", data=upload_form(csv_bytes())) for _ in range(3))
        )
        assert [r.status for r in sent] == [201] * 3


@hsettings(max_examples=300, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=8),
    period=st.sampled_from([1.0, 60.0, 3600.0]),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=80),
)
def test_token_buckets_admit_every_sequence_within_the_limit(
    count: int, period: float, gaps: list[float]
) -> None:
    """A client that sends only while it has sent fewer than ``count`` in the last
    ``period`` (a sliding window) is always admitted."""
    buckets = TokenBuckets(RateLimit(count, period))
    admitted: list[float] = []
    now = 1000.0
    for gap in gaps:
        now += gap * period
        if len([t for t in admitted if now - t < period]) < count:
            assert buckets.take("c", now) == 0.0, (admitted, now)
            admitted.append(now)


def test_one_request_more_waits_for_a_token() -> None:
    buckets = TokenBuckets(RateLimit(4, 60.0))
    for _ in range(4):
        assert buckets.take("c", 10.0) == 0.0
    wait = buckets.take("c", 10.0)
    assert wait == pytest.approx(15.0)  # a token every 60 / 4 s
    assert buckets.take("c", 10.0 + wait / 2) > 0
    assert buckets.take("c", 10.0 + wait) == 0.0
    assert buckets.take("other", 10.0) == 0.0


def test_token_buckets_forget_clients_whose_bucket_is_full() -> None:
    buckets = TokenBuckets(RateLimit(10, 60.0))
    for n in range(1000):
        assert buckets.take(f"10.0.{n // 256}.{n % 256}", 100.0) == 0.0
    assert len(buckets.buckets) == 1000
    assert buckets.take("late", 130.0) == 0.0  # half refilled: all kept
    assert len(buckets.buckets) == 1001
    assert buckets.take("later", 200.0) == 0.0  # a minute on: full again, forgotten
    assert set(buckets.buckets) == {"later"}


async def test_cors_preflights_spend_no_token_and_a_browser_may_read_retry_after(
    make_client: MakeClient, settings: Settings
) -> None:
    origin = "https://app.example"
    client = await make_client(
        replace(settings, rate_limit=RateLimit(1, 60.0), cors_origins=origin)
    )
    preflight = {"Origin": origin, "Access-Control-Request-Method": "GET"}
    for _ in range(3):  # a browser sends one before requests of its own kind
        assert (await client.options("/api/csv/sessions", headers=preflight)).status == 200
    first = await client.get("/api/csv/sessions", headers={"Origin": origin})
    assert first.status == 200  # the one token was still there
    limited = await client.get("/api/csv/sessions", headers={"Origin": origin})
    assert limited.status == 429
    assert limited.headers["Access-Control-Allow-Origin"] == origin
    assert "Retry-After" in limited.headers["Access-Control-Expose-Headers"]
