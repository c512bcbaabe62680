"""A request body as an async iterator of bytes: where aiohttp's read errors become ours."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp
from aiohttp import StreamReader
from aiohttp.http_exceptions import HttpProcessingError

from csvstore.errors import BadRequest, ClientGone, RequestTimeout
from csvstore.uploads import UploadLimits


async def body_chunks(
    body: StreamReader, limits: UploadLimits, *, broken_is_gone: bool = False
) -> AsyncGenerator[bytes, None]:
    """The body in reads of at most ``chunk_size``, each waiting at most ``read_timeout``.

    What has already arrived is taken without a timer (see bench/RESULTS.md, issue 16).
    ``broken_is_gone``: a body cut short (ContentLengthError and kin) is a client gone (tus
    keeps what arrived), not a malformed body (400)."""
    while True:
        try:
            chunk = body.read_nowait(limits.chunk_size)
            if not chunk and not body.at_eof():
                async with asyncio.timeout(limits.read_timeout):
                    chunk = await body.read(limits.chunk_size)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body stalled: nothing arrived for {limits.read_timeout:g} seconds"
            ) from None
        except HttpProcessingError as exc:
            if broken_is_gone:
                raise ClientGone() from exc
            raise BadRequest(f"malformed request body: {exc.message}") from None
        except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
            raise ClientGone() from exc
        if not chunk:
            return
        yield chunk
