"""Where any exception becomes an HTTP answer: ``application/problem+json`` (RFC 9457) with
``detail``, ``code`` (the error's reason) and ``type`` (``urn:csvstore:problem:<code>``)."""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import HttpVersion11, hdrs, web

from csvstore.errors import (
    ClientGone,
    CsvstoreError,
    DependencyUnavailable,
    InsufficientStorage,
    error_classes,
    storage_unavailable,
)

log = logging.getLogger("csvstore")

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "urn:csvstore:problem:"

# Reasons of answers that are not one of our errors.
INTERNAL_ERROR = "internal-error"
CLIENT_GONE = "client-gone"
INVALID_HTTP = "invalid-http"
NOT_READY = "not-ready"
EXPECTATION_FAILED = "expectation-failed"
SHUTTING_DOWN = "shutting-down"  # aborted past --shutdown-grace: logged as a 503, never sent
# The request's id (the client's, if plain, else one made): set by observability's middleware.
REQUEST_ID = web.RequestKey("request_id", str)
_AIOHTTP_REASONS = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}


def all_reasons() -> list[str]:
    ours = [cls.reason for cls in error_classes()]
    others = [
        *_AIOHTTP_REASONS.values(),
        INTERNAL_ERROR,
        CLIENT_GONE,
        INVALID_HTTP,
        NOT_READY,
        SHUTTING_DOWN,
        EXPECTATION_FAILED,
    ]
    return sorted(set(ours + others))


_EXTRA_TITLES = {460: "Checksum Mismatch"}  # tus 1.0's checksum extension: not in HTTPStatus

ERROR_REASON = web.RequestKey("error_reason", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Once the status line is out, an error can only end the connection.
RESPONSE_STARTED = web.RequestKey("response_started", bool)


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": _EXTRA_TITLES.get(status) or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
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


async def meet_expectation(request: web.Request) -> web.StreamResponse | None:
    """Every route's ``expect_handler``: aiohttp's own (a ``100 Continue`` for
    ``100-continue``), but its refusal of any other expectation a problem like every error;
    aiohttp's is text/plain and runs before the middlewares."""
    if request.version != HttpVersion11:
        return None
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not begun
        return None
    return problem_response(
        417, EXPECTATION_FAILED, f"only 'Expect: 100-continue' can be met, not {expect[:100]!r}"
    )


async def start_response(request: web.Request, response: web.StreamResponse) -> None:
    """``response.prepare(request)``, marked so that a later error aborts the connection."""
    request[RESPONSE_STARTED] = True
    await response.prepare(request)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# aiohttp's own 413 (a JSON body over client_max_size) names the limit only in its text.
_BODY_LIMIT = re.compile(r"Maximum request body size (\d+)")
_AIOHTTP_DETAILS = {
    404: "no such endpoint: {method} {path}",
    405: "method {method} is not allowed on {path}",
}


# Called by the observe middleware (web/observability.py) for any exception of a request.
def abort_started(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The head is out: a short or unterminated body is how the client learns of it."""
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


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    if isinstance(exc, DependencyUnavailable):
        return _unavailable(request, exc, exc.__cause__)
    if isinstance(exc, CsvstoreError):
        return _our_error_response(request, exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        template = _AIOHTTP_DETAILS.get(exc.status)
        detail = (
            template.format(method=request.method, path=request.path) if template else exc.reason
        )
        if exc.status == 413 and (limit := _BODY_LIMIT.search(exc.text or "")):
            detail = (
                f"the request body is over {limit[1]} bytes, the most this request may send"
                " (files go in an upload: multipart or tus)"
            )
        code = _AIOHTTP_REASONS.get(exc.status) or _slug(exc.status)
        request[ERROR_REASON] = code
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem_response(exc.status, code, detail, headers=headers)
    unavailable = storage_unavailable(exc)  # some of botocore's timeouts are OSErrors
    if unavailable is not None:
        return _unavailable(request, unavailable, exc)
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        # Wherever the disk filled up (temp file, publish, folder sync), the answer is 507.
        full = InsufficientStorage("the server's disk is full: the upload could not be stored")
        return _our_error_response(request, full)
    if isinstance(exc, ClientGone):
        request[ERROR_REASON] = CLIENT_GONE
        # Nothing useful can reach the client; 400 keeps it out of the 5xx figures.
        return problem_response(
            400, CLIENT_GONE, "the client closed the connection before the body ended"
        )
    # Never echo the exception: it may name internal paths. The log has the traceback.
    request_id = request.get(REQUEST_ID)
    log.error(
        "unhandled error on %s %s id=%s",
        request.method,
        request.path,
        request_id,
        exc_info=exc,
        extra={"request_id": request_id, "method": request.method, "path": request.path},
    )
    request[ERROR_REASON] = INTERNAL_ERROR
    return problem_response(
        500, INTERNAL_ERROR, "internal error: the server could not complete the request"
    )


def _slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-")


def _unavailable(
    request: web.Request, unavailable: DependencyUnavailable, cause: BaseException | None
) -> web.Response:
    log.warning("%s %s: %s (%r)", request.method, request.path, unavailable.detail, cause)
    return _our_error_response(request, unavailable)


def _our_error_response(request: web.Request, exc: CsvstoreError) -> web.Response:
    request[ERROR_REASON] = exc.reason
    extensions = {"dependency": exc.dependency} if isinstance(exc, DependencyUnavailable) else None
    return problem_response(
        exc.status,
        exc.reason,
        exc.detail,
        errors=exc.errors,
        headers=exc.response_headers(),
        extensions=extensions,
    )
