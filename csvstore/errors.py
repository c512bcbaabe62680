"""The error hierarchy, and the one place where any exception becomes an HTTP answer.

Domain code raises :class:`ApiError` subclasses where the problem is known; the middleware
renders every error -- ours, aiohttp's own (404 route, 405 method) and unexpected ones --
as ``application/problem+json`` (RFC 9457) that always carries ``detail``.
"""

from __future__ import annotations

import errno
import logging
import math
import sys
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from aiohttp import web

log = logging.getLogger("csvstore")

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """An error a client can act on. ``status`` lives on the class; ``detail`` says why.

    ``retry_after`` (seconds; the class's default or the instance's) becomes ``Retry-After``:
    the error passes, and the client may send the same request again after that long."""

    status: ClassVar[int] = 500
    retry_after: float | None = None

    def __init__(
        self,
        detail: str,
        *,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers
        if retry_after is not None:
            self.retry_after = retry_after

    def response_headers(self) -> dict[str, str] | None:
        if self.retry_after is None:
            return self.headers
        return {"Retry-After": retry_after_value(self.retry_after), **(self.headers or {})}


def retry_after_value(seconds: float) -> str:
    """Whole seconds, rounded up: a client that waits exactly this long is not early."""
    return str(max(1, math.ceil(seconds)))


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
    # Space comes back when files are deleted or sessions expire (the sweeper runs every
    # minute by default): sooner than that, a retry would most likely fail the same way.
    retry_after = 60.0


class DependencyUnavailable(ApiError):
    """The database or the storage cannot be reached (stopped, restarting, refusing
    connections): the request is sound, and may succeed once it is back. The problem body
    names the dependency (``"dependency": "database"`` or ``"storage"``)."""

    status = 503
    # Long enough for a database restart or a fail-over to finish, short enough that
    # clients come back soon after.
    retry_after = 5.0

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(detail)
        self.dependency = dependency


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
    extensions: dict[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _EXTRA_TITLES.get(status) or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    if extensions:
        body.update(extensions)
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
    if isinstance(exc, DependencyUnavailable):
        return _unavailable(request, exc, exc.__cause__)
    if isinstance(exc, ApiError):
        request[ERROR_KIND] = type(exc).__name__
        return _api_error_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        template = _AIOHTTP_DETAILS.get(exc.status)
        detail = (
            template.format(method=request.method, path=request.path) if template else exc.reason
        )
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem_response(exc.status, detail, headers=headers)
    unavailable = storage_unavailable(exc)  # some of botocore's timeouts are OSErrors
    if unavailable is not None:
        return _unavailable(request, unavailable, exc)
    if isinstance(exc, OSError):
        if exc.errno not in _DISK_FULL:
            log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
            return _internal_error()
        # Wherever the disk filled up (temp file, publish, folder sync), the answer is 507.
        request[ERROR_KIND] = "InsufficientStorage"
        return _api_error_response(
            InsufficientStorage("the server's disk is full: the upload could not be stored")
        )
    if isinstance(exc, ClientGone):
        request[ERROR_KIND] = "ClientGone"
        # Nothing useful can reach the client; 400 keeps it out of the 5xx figures.
        return problem_response(400, "the client closed the connection before the body ended")
    # Never echo the exception: it may name internal paths. The log has the traceback.
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return _internal_error()


def _unavailable(
    request: web.Request, unavailable: DependencyUnavailable, cause: BaseException | None
) -> web.Response:
    log.warning("%s %s: %s (%r)", request.method, request.path, unavailable.detail, cause)
    request[ERROR_KIND] = "DependencyUnavailable"
    return _api_error_response(unavailable)


def _api_error_response(exc: ApiError) -> web.Response:
    extensions = {"dependency": exc.dependency} if isinstance(exc, DependencyUnavailable) else None
    return problem_response(
        exc.status,
        exc.detail,
        errors=exc.errors,
        headers=exc.response_headers(),
        extensions=extensions,
    )


def storage_unavailable(exc: BaseException) -> DependencyUnavailable | None:
    """S3 storage out of reach, as botocore reports it: no connection, a connection cut, a
    timeout, or the service's own 5xx after botocore's retries. botocore is looked up, not
    imported: if it was never loaded (local storage), this cannot be one of its errors."""
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is None:
        return None
    unreachable = isinstance(exc, botocore.HTTPClientError | botocore.ConnectionError)
    if isinstance(exc, botocore.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        unreachable = status >= 500
    if not unreachable:
        return None
    return DependencyUnavailable(
        "storage", "the storage (S3) is unavailable: the request could not be completed"
    )


def _internal_error() -> web.Response:
    return problem_response(500, "internal error: the server could not complete the request")
