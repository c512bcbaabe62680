"""Talking to a csvstore server: one aiohttp session, the API key, and every failure as a
``CliFailure`` carrying the exit code scripts see."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from enum import IntEnum
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp

from csvstore import __version__

API = "/api/csv"

# Connecting is quick or never; an answer may wait for a large upload's fsync and commit.
CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 300.0
# A 429 is waited out (Retry-After, at most BUSY_WAIT_MAX) and sent again this many times.
BUSY_RETRIES = 5
BUSY_WAIT_MAX = 30.0


class ExitCode(IntEnum):
    """What a script can rely on; when several items fail differently the largest wins."""

    OK = 0
    REFUSED = 1  # the server refused (4xx) at least one item
    USAGE = 2  # bad arguments, or local files that cannot be read or written
    UNAVAILABLE = 3  # cannot connect, the connection broke, or a server error (5xx)
    INTEGRITY = 4  # the bytes received do not match the file's recorded SHA-256


class CliFailure(Exception):
    """A command, or one item of it, failed: what to tell the user and which exit code."""

    def __init__(
        self,
        exit_code: ExitCode,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.exit_code = exit_code
        self.detail = detail
        self.status = status
        self.title = title
        self.headers: Mapping[str, str] = headers or {}

    @property
    def retry_after(self) -> float | None:
        return retry_after(self.headers)

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "title": self.title,
            "detail": self.detail,
            "exit_code": int(self.exit_code),
        }


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's ``Retry-After`` in seconds (the delta form; a date is ignored)."""
    value = headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def busy_wait(headers: Mapping[str, str], attempt: int) -> float:
    """How long to wait before sending again after the ``attempt``-th 429 (from 0)."""
    return min(retry_after(headers) or float(attempt + 1), BUSY_WAIT_MAX)


def path(*segments: str) -> str:
    """An API path with each segment percent-escaped (ids may hold '.', never '/')."""
    return API + "".join("/" + quote(segment, safe="") for segment in segments)


def _failure_from_body(
    status: int, reason: str | None, body: bytes, headers: Mapping[str, str]
) -> CliFailure:
    exit_code = ExitCode.REFUSED if 400 <= status < 500 else ExitCode.UNAVAILABLE
    title = reason
    detail = ""
    try:
        problem = json.loads(body)
    except ValueError:
        detail = body.decode("utf-8", "replace").strip()[:500]
    else:
        if isinstance(problem, dict):
            detail = str(problem.get("detail") or "")
            title = str(problem.get("title") or reason or "")
    return CliFailure(
        exit_code,
        f"{status} {title}: {detail}" if detail else f"{status} {title}",
        status=status,
        title=title,
        headers=dict(headers),
    )


class Api:
    """The server at ``base_url``; use as ``async with Api(...) as api``."""

    def __init__(self, base_url: str, api_key: str | None, *, connections: int = 4) -> None:
        parts = urlsplit(base_url)
        try:
            valid = parts.scheme in ("http", "https") and bool(parts.netloc) and parts.port != 0
        except ValueError:  # a port past 65535, or not a number
            valid = False
        if not valid:
            raise CliFailure(ExitCode.USAGE, f"--url must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._headers = {"User-Agent": f"csvstore-cli/{__version__}"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
            ),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, api_path: str) -> str:
        return self.base_url + api_path

    @asynccontextmanager
    async def request(
        self, method: str, url: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response of a request that succeeded (< 400); else (or on a broken body)
        ``CliFailure``."""
        assert self._session is not None, "use Api as an async context manager"
        # Bytes or JSON can be sent again after a 429; a streamed form is the caller's to resend.
        resendable = isinstance(kwargs.get("data"), bytes | bytearray | str | None)
        try:
            for attempt in range(BUSY_RETRIES + 1):
                async with self._session.request(method, url, **kwargs) as response:
                    busy = response.status == 429 and resendable and attempt < BUSY_RETRIES
                    if not busy:
                        if response.status >= 400:
                            raise _failure_from_body(
                                response.status,
                                response.reason,
                                await response.read(),
                                response.headers,
                            )
                        yield response
                        return
                    await response.read()
                    wait = busy_wait(response.headers, attempt)
                await asyncio.sleep(wait)
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or str(exc.os_error)
            raise CliFailure(
                ExitCode.UNAVAILABLE, f"cannot connect to {self.base_url}: {reason}"
            ) from None
        except aiohttp.ClientResponseError as exc:
            raise CliFailure(
                ExitCode.UNAVAILABLE, f"bad answer from {self.base_url}: {exc.message}"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            what = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            raise CliFailure(
                ExitCode.UNAVAILABLE,
                f"the connection to {self.base_url} failed: {what or type(exc).__name__}",
            ) from None

    async def call(
        self,
        method: str,
        api_path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
    ) -> Any:
        """One request with a JSON answer."""
        async with self.request(method, self.url(api_path), json=json_body) as response:
            return await _json_of(response)

    async def pages(self, api_path: str, *, limit: int) -> AsyncIterator[list[Any]]:
        """Each page of a listing, following ``Link: <...>; rel="next"`` until there is none."""
        url: str | None = f"{self.url(api_path)}?limit={limit}"
        while url is not None:
            async with self.request("GET", url) as response:
                page = await _json_of(response)
                link = response.links.get("next")
                url = urljoin(url, str(link["url"])) if link else None
            if not isinstance(page, list):
                raise CliFailure(ExitCode.UNAVAILABLE, "the listing is not a JSON array")
            yield page


async def _json_of(response: aiohttp.ClientResponse) -> Any:
    body = await response.read()
    try:
        return json.loads(body)
    except ValueError:
        raise CliFailure(
            ExitCode.UNAVAILABLE,
            f"the server's answer to {response.method} {response.url.path} is not JSON",
            status=response.status,
        ) from None
