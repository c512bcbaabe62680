"""A request body as an async iterator of bytes: where aiohttp's read errors become ours."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp
from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from csvstore.errors import BadRequest, ClientGone, RequestTimeout, UnsupportedMediaType
from csvstore.uploads import UploadLimits

# What aiohttp's parser decodes; any other coding would reach us still encoded.
DECODED_CODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})


def refuse_unknown_coding(request: web.BaseRequest) -> None:
    """415 for a body in a content coding that would be taken for its decoded bytes."""
    coding = (request.headers.get("Content-Encoding") or "").strip()
    if coding.lower() not in DECODED_CODINGS and request.body_exists:
        raise UnsupportedMediaType(
            f"Content-Encoding {coding[:40]!r} is not supported: send the body as is, "
            "or in one of gzip, deflate, br, zstd"
        )


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
