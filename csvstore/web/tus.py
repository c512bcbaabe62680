"""The tus 1.0 protocol under ``/api/csv/tus/``: headers, status codes and metadata,
mapped to the engine (resumable/engine.py). Extensions: creation, creation-with-upload,
termination, checksum, expiration. See docs/design/resumable.md."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import hashlib
import re
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

from csvstore.analysis.content import clean_filename
from csvstore.errors import (
    BadRequest,
    PreconditionFailed,
    UnsupportedMediaType,
    UploadTooLarge,
    ValidationFailed,
)
from csvstore.resumable.engine import Body, ChecksumMismatchAt, Conflict, ResumableUploads
from csvstore.resumable.local import PartialState
from csvstore.uploads import UploadLimits
from csvstore.web.body import body_chunks, refuse_unknown_coding
from csvstore.web.keys import LIMITS_KEY, METRICS_KEY, SETTINGS_KEY, STORE_KEY
from csvstore.web.observability import UPLOADED_BYTES
from csvstore.web.problems import meet_expectation
from csvstore.web.schemas import SESSION_ID_PATTERN, SESSION_ID_RULE, UploadOptions, load
from csvstore.web.security import TUS_EXPOSE_HEADERS, TUS_REQUEST_HEADERS

TUS_ROOT = "/api/csv/tus/"
TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"
OFFSET_STREAM = "application/offset+octet-stream"
# sha1 is tuspy's, md5 and sha512 other clients'; they check transfer, not authenticity.
CHECKSUM_ALGORITHMS = ("sha256", "sha1", "md5", "sha512")

# Upload-Metadata is a few short values; a longer header is not one we would accept.
MAX_METADATA_BYTES = 8192


# Headers


def _expires(moment: float) -> str:
    return email.utils.formatdate(moment, usegmt=True)


def _location(upload_id: str) -> str:
    return f"{TUS_ROOT}{upload_id}"


def _file_location(file_id: str) -> str:
    return f"/api/csv/files/{file_id}"


def _progress_headers(state: PartialState) -> dict[str, str]:
    headers = {"Upload-Offset": str(state.offset)}
    if state.completed and state.file_id is not None:
        headers["Content-Location"] = _file_location(state.file_id)
    else:
        headers["Upload-Expires"] = _expires(state.expires_at)
    return headers


def _sent_type(request: web.Request) -> str:
    """The Content-Type as sent (aiohttp reports application/octet-stream for none)."""
    return request.content_type if "Content-Type" in request.headers else "none"


def _require_tus(request: web.Request) -> None:
    version = request.headers.get("Tus-Resumable")
    if version != TUS_VERSION:
        raise PreconditionFailed(
            f"this server speaks tus {TUS_VERSION}: send 'Tus-Resumable: {TUS_VERSION}' "
            + ("(none was sent)" if version is None else f"(got {version[:40]!r})"),
            headers={"Tus-Version": TUS_VERSION},
        )


def _int_header(request: web.Request, name: str, *, required: bool = True) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        if required:
            raise BadRequest(f"the {name} header is required")
        return None
    # ASCII only: isdigit takes "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
        raise BadRequest(f"the {name} header must be a non-negative integer, got {raw!r}")
    return int(raw)


def parse_metadata(header: str) -> dict[str, str]:
    """``key base64,key2 base64,flag`` -> {key: text}; a key alone means an empty value."""
    if len(header) > MAX_METADATA_BYTES:
        raise BadRequest(f"Upload-Metadata is longer than {MAX_METADATA_BYTES} characters")
    try:
        header.encode()
    except UnicodeEncodeError:
        raise BadRequest("Upload-Metadata is not UTF-8 text") from None
    pairs: dict[str, str] = {}
    for item in header.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, encoded = item.partition(" ")
        encoded = encoded.strip()
        if not key or " " in encoded:
            raise BadRequest(f"malformed Upload-Metadata pair {item!r}: expected 'key base64'")
        if key in pairs:
            raise BadRequest(f"Upload-Metadata names {key!r} twice")
        try:
            pairs[key] = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise BadRequest(
                f"Upload-Metadata value of {key!r} is not base64-encoded UTF-8 text"
            ) from None
    return pairs


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """``Upload-Checksum: sha256 <base64>`` -> ("sha256", digest)."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise BadRequest(
            f"unsupported Upload-Checksum algorithm {algorithm!r}; "
            f"supported: {', '.join(CHECKSUM_ALGORITHMS)}"
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            "malformed Upload-Checksum: expected '<algorithm> <base64 digest>'"
        ) from None
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise BadRequest(f"malformed Upload-Checksum: a {algorithm} digest has another length")
    return algorithm, digest


# Handlers


def _engine(request: web.Request) -> ResumableUploads:
    return request.app[ENGINE_KEY]


@contextlib.contextmanager
def _tus_answers() -> Iterator[None]:
    """The engine's refusals, with the headers tus gives them."""
    try:
        yield
    except Conflict as exc:
        exc.headers = _progress_headers(exc.state)
        raise
    except ChecksumMismatchAt as exc:
        exc.headers = {"Upload-Offset": str(exc.offset)}
        raise


def _body(request: web.Request, checksum: tuple[str, bytes] | None) -> Body:
    limits: UploadLimits = request.app[LIMITS_KEY]
    refuse_unknown_coding(request)
    return Body(
        body_chunks(request.content, limits, broken_is_gone=True),
        declared=request.content_length,
        present=_has_body(request),
        checksum=checksum,
    )


async def options(request: web.Request) -> web.Response:
    """Discovery; also the CORS preflight of the creation URL, which aiohttp-cors cannot
    answer on a resource that has an OPTIONS handler of its own."""
    limits: UploadLimits = request.app[LIMITS_KEY]
    headers = {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(limits.max_upload_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }
    wanted = request.headers.get("Access-Control-Request-Method")
    if wanted is not None and _allowed_origin(request):
        headers |= {
            "Access-Control-Allow-Origin": request.headers["Origin"],
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ", ".join(_CORS_REQUEST_HEADERS),
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }
    return web.Response(status=204, headers=headers)


_CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "X-Request-ID", *TUS_REQUEST_HEADERS)
_CORS_EXPOSE_HEADERS = ("Location", "X-Request-ID", *TUS_EXPOSE_HEADERS)


def _allowed_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    allowed = {o.strip() for o in request.app[SETTINGS_KEY].cors_origins.split(",")}
    return origin in allowed or "*" in allowed


async def create(request: web.Request) -> web.Response:
    """POST: a new upload (creation), with its first bytes if the body has them."""
    _require_tus(request)
    engine = _engine(request)
    engine.require()
    limits: UploadLimits = request.app[LIMITS_KEY]
    if "Upload-Defer-Length" in request.headers:
        raise BadRequest("Upload-Defer-Length is not supported: send Upload-Length")
    length = _int_header(request, "Upload-Length")
    assert length is not None
    if length > limits.max_upload_size:
        raise UploadTooLarge(
            f"Upload-Length {length} is larger than the limit of {limits.max_upload_size} bytes"
        )
    metadata_header = request.headers.get("Upload-Metadata", "")
    metadata = parse_metadata(metadata_header)
    session_id = _session_id(metadata)
    filename = clean_filename(_required(metadata, "filename"))
    option_values = {k: v for k, v in metadata.items() if k in _OPTION_FIELDS}
    opts = load(_upload_options, option_values, what="Upload-Metadata")
    with_upload = _has_body(request)
    if with_upload and request.content_type != OFFSET_STREAM:
        raise UnsupportedMediaType(
            f"creation-with-upload needs Content-Type: {OFFSET_STREAM}, got {_sent_type(request)}"
        )
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    with _tus_answers():
        state = await engine.create(
            length=length,
            session_id=session_id,
            filename=filename,
            metadata=metadata_header,
            options=opts,
            first=_body(request, checksum) if with_upload else None,
        )
    if state.completed:
        request[UPLOADED_BYTES] = state.length
    headers = {"Location": _location(state.id), **_progress_headers(state)}
    return web.Response(status=201, headers=headers)


async def head(request: web.Request) -> web.Response:
    _require_tus(request)
    state = await _engine(request).state(request.match_info["upload_id"])
    headers = {
        "Upload-Length": str(state.length),
        "Cache-Control": "no-store",
        **_progress_headers(state),
    }
    if state.metadata:
        headers["Upload-Metadata"] = state.metadata
    return web.Response(status=200, headers=headers)


async def patch(request: web.Request) -> web.Response:
    _require_tus(request)
    if request.content_type != OFFSET_STREAM:
        raise UnsupportedMediaType(
            f"a PATCH carries Content-Type: {OFFSET_STREAM}, got {_sent_type(request)}"
        )
    offset = _int_header(request, "Upload-Offset")
    assert offset is not None
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    engine = _engine(request)
    with _tus_answers():
        state = await engine.patch(
            request.match_info["upload_id"], offset, _body(request, checksum)
        )
    if state.completed and offset < state.length:  # completed by this request, not a retry
        request[UPLOADED_BYTES] = state.length
    return web.Response(status=204, headers=_progress_headers(state))


async def terminate(request: web.Request) -> web.Response:
    """DELETE: the upload and its bytes go (a completed one's record only: the stored file
    is deleted through /api/csv/files/{id})."""
    _require_tus(request)
    await _engine(request).terminate(request.match_info["upload_id"])
    return web.Response(status=204)


def _required(metadata: dict[str, str], key: str) -> str:
    value = metadata.get(key)
    if value is None:
        raise ValidationFailed(
            f"Upload-Metadata must carry {key!r} (base64): the target session and the "
            "original file name",
            errors={key: ["Missing data for required field."]},
        )
    return value


def _session_id(metadata: dict[str, str]) -> str:
    value = _required(metadata, "session_id")
    if _SESSION_ID.fullmatch(value) is None:
        raise ValidationFailed(
            f"invalid session_id: {SESSION_ID_RULE}", errors={"session_id": [SESSION_ID_RULE]}
        )
    return value


# Built once, as in ingest.py: a marshmallow schema is costly to build per request.
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_OPTION_FIELDS = frozenset(UploadOptions().fields)
_upload_options = UploadOptions()


def _has_body(request: web.Request) -> bool:
    if request.content_length is not None:
        return request.content_length > 0
    return request.headers.get("Transfer-Encoding", "").lower() == "chunked"


# Wiring


async def add_tus_resumable(request: web.Request, response: web.StreamResponse) -> None:
    """Every response of the tus endpoint carries Tus-Resumable, errors included."""
    if not request.path.startswith(TUS_ROOT.rstrip("/")):
        return
    response.headers["Tus-Resumable"] = TUS_VERSION
    # The creation URL's CORS answers (see options); aiohttp-cors does the upload URLs'.
    if (
        request.path.rstrip("/") == TUS_ROOT.rstrip("/")
        and "Access-Control-Allow-Origin" not in response.headers
        and _allowed_origin(request)
    ):
        response.headers["Access-Control-Allow-Origin"] = request.headers["Origin"]
        response.headers["Access-Control-Expose-Headers"] = ",".join(_CORS_EXPOSE_HEADERS)
        response.headers.add("Vary", "Origin")


async def _engine_and_sweeper(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    engine = ResumableUploads.of(
        app[STORE_KEY], app[LIMITS_KEY], settings.tus_expiry, app[METRICS_KEY].tus
    )
    app[ENGINE_KEY] = engine
    if not engine.available:
        yield
        return
    task = asyncio.create_task(
        engine.sweep_forever(settings.sweep_interval), name="tus-expiry-sweeper"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


ENGINE_KEY = web.AppKey("tus_engine", ResumableUploads)


def setup_tus(app: web.Application) -> None:
    """The header every tus response carries, the engine (once the store is open) with its
    sweeper of abandoned uploads, and the endpoint without its trailing slash (the routes
    themselves are in routes.py)."""
    app.on_response_prepare.append(add_tus_resumable)
    app.cleanup_ctx.append(_engine_and_sweeper)
    bare = TUS_ROOT.rstrip("/")
    app.router.add_route("POST", bare, create, expect_handler=meet_expectation)
    app.router.add_route("OPTIONS", bare, options, expect_handler=meet_expectation)
