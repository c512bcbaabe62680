"""A request body as an async iterator of bytes: where aiohttp's read errors become ours."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp
from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from csvstore.errors import BadRequest, ClientGone, RequestTimeout
from csvstore.uploads import UploadLimits


async def body_chunks(
    body: StreamReader, limits: UploadLimits, *, broken_is_gone: bool = False
) -> AsyncGenerator[bytes, None]:
    """Reads of at most ``chunk_size``, waiting at most ``read_timeout`` (what has arrived
    is taken without a timer); ``broken_is_gone``: a cut body is ClientGone, not a 400."""
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
        except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip, but not gzip
            body.feed_eof()  # aiohttp's parser gave up on it: nothing more can be read
            message = " ".join(str(exc).partition("message:")[2].split())
            raise BadRequest(f"the request body could not be read: {message}") from None
        except HttpProcessingError as exc:
            if broken_is_gone:
                raise ClientGone() from exc
            raise BadRequest(f"malformed request body: {exc.message}") from None
        except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
            raise ClientGone() from exc
        if not chunk:
            return
        yield chunk
