"""The error hierarchy, and the one place where any exception becomes an HTTP answer.

Domain code raises :class:`ApiError` subclasses where the problem is known; the middleware
renders every error -- ours, aiohttp's own (404 route, 405 method) and unexpected ones --
as ``application/problem+json`` (RFC 9457) that always carries ``detail``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from aiohttp import web

log = logging.getLogger("csvstore")

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """An error a client can act on. ``status`` lives on the class; ``detail`` says why."""

    status: ClassVar[int] = 500

    def __init__(
        self,
        detail: str,
        *,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class BadRequest(ApiError):
    status = 400


class ValidationFailed(BadRequest):
    """Input that does not fit its schema; ``errors`` names the offending fields."""


class NotACsv(BadRequest):
    """The uploaded bytes, or the file name, are not a CSV file."""


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class RequestTimeout(ApiError):
    status = 408


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class RangeNotSatisfiable(ApiError):
    status = 416


class InsufficientStorage(ApiError):
    status = 507


class StoredFileUnavailable(ApiError):
    """A file's row is there but its stored bytes are gone or not the size recorded."""

    status = 500


class ClientGone(Exception):
    """The client stopped sending mid-body; there is nobody left to answer."""


# Statuses of protocols the service speaks that the HTTP registry does not list.
_EXTRA_TITLES = {460: "Checksum Mismatch"}  # tus 1.0, checksum extension


def problem_response(
    status: int,
    detail: str,
    *,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _EXTRA_TITLES.get(status) or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type=PROBLEM_JSON,
        headers=headers,
        reason=_EXTRA_TITLES.get(status),
    )


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

# The name of the error that ended a request, for the metrics of rejected uploads.
ERROR_KIND = web.RequestKey("error_kind", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Set once a handler has sent (or buffered) its status line: an error after that point can
# only end the connection, never become a second response inside the first one's body.
RESPONSE_STARTED = web.RequestKey("response_started", bool)


async def start_response(request: web.Request, response: web.StreamResponse) -> None:
    """``response.prepare(request)``, marked so that a later error aborts the connection."""
    request[RESPONSE_STARTED] = True
    await response.prepare(request)


_AIOHTTP_DETAILS = {
    404: "no such endpoint: {method} {path}",
    405: "method {method} is not allowed on {path}",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        if request.get(RESPONSE_STARTED):
            return _abort(request, exc)
        return _error_response(request, exc)


def _abort(request: web.Request, exc: Exception) -> web.StreamResponse:
    """End a response whose head is already out: the client sees a short (Content-Length)
    or unterminated (chunked) body, which it reports as an error."""
    if not isinstance(exc, ClientGone | ConnectionError):
        log.error(
            "error after the response to %s %s began; connection closed",
            request.method,
            request.path,
            exc_info=exc,
        )
    if request.transport is not None:
        request.transport.close()  # what was written is flushed, then the connection ends
    # aiohttp prepares whatever is returned; over a closing transport that writes nothing.
    return web.StreamResponse(status=500)


def _error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    if isinstance(exc, ApiError):
        request[ERROR_KIND] = type(exc).__name__
        return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        template = _AIOHTTP_DETAILS.get(exc.status)
        detail = (
            template.format(method=request.method, path=request.path) if template else exc.reason
        )
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem_response(exc.status, detail, headers=headers)
    if isinstance(exc, OSError):
        if exc.errno not in _DISK_FULL:
            log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
            return _internal_error()
        # Wherever the disk filled up (temp file, publish, folder sync), the answer is 507.
        request[ERROR_KIND] = "InsufficientStorage"
        return problem_response(507, "the server's disk is full: the upload could not be stored")
    if isinstance(exc, ClientGone):
        request[ERROR_KIND] = "ClientGone"
        # Nothing useful can reach the client; 400 keeps it out of the 5xx figures.
        return problem_response(400, "the client closed the connection before the body ended")
    # Never echo the exception: it may name internal paths. The log has the traceback.
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return _internal_error()


def _internal_error() -> web.Response:
    return problem_response(500, "internal error: the server could not complete the request")
