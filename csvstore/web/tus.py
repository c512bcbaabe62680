"""Resumable uploads: the tus 1.0 protocol under ``/api/csv/tus/``.

Core protocol plus the ``creation``, ``creation-with-upload``, ``termination``,
``checksum`` and ``expiration`` extensions (https://tus.io/protocols/resumable-upload).
The target session and the original file name come in ``Upload-Metadata`` (``session_id``,
``filename``; optionally ``sha256``, ``strict``, ``dedupe`` as for a single-shot upload).

A partial upload lives in the partial store (``partial.py`` on local storage,
``partial_s3.py`` on S3) and is not listed anywhere until its last byte arrives. Then the
analysis fed while the bytes arrived is finished -- or, when this process does not have it,
the complete file is read back once (from disk, or the completed object from S3) through
the same :class:`UploadAnalysis` as a single-shot upload (CSV check, digest, profile) -- and
the file is published where its bytes are (a rename, or completing the multipart upload)
through the same ``CsvStore.publish_upload``, so a resumed file and a single-shot file of
the same bytes are the same row. Re-reading costs one sequential pass over the file (see
the README for the figure on 1 GiB); in exchange nothing of the analysis has to survive
between requests, processes or crashes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from csvstore.analysis.content import clean_filename, invalid_bytes_message
from csvstore.analysis.stream import FileFacts, UploadAnalysis
from csvstore.crashpoints import crash_point
from csvstore.errors import (
    ApiError,
    BadRequest,
    ClientGone,
    DependencyUnavailable,
    InsufficientStorage,
    NotACsv,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    ValidationFailed,
    storage_unavailable,
)
from csvstore.resumable.local import PartialHold, PartialState, PartialStore, UploadLocked
from csvstore.service import CsvStore, Published
from csvstore.storage.local import StorageWriter
from csvstore.timeutil import utc_now
from csvstore.web.ingest import UploadLimits
from csvstore.web.keys import LIMITS_KEY, SETTINGS_KEY, STORE_KEY
from csvstore.web.schemas import UploadForm, UploadOptions, load
from csvstore.web.security import TUS_EXPOSE_HEADERS, TUS_REQUEST_HEADERS

log = logging.getLogger("csvstore.tus")

TUS_ROOT = "/api/csv/tus/"
TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"
OFFSET_STREAM = "application/offset+octet-stream"
# sha256 is the one the issue asks for; sha1 is what tuspy sends, md5 and sha512 what other
# clients (tus-js-client, Uppy) may choose. They check transfer, not authenticity.
CHECKSUM_ALGORITHMS = ("sha256", "sha1", "md5", "sha512")

# A long PATCH (tuspy sends the whole file in one by default) makes what it has received
# durable every so often, so a server crash mid-request loses at most this much of it.
CHECKPOINT_BYTES = 64 * 1024 * 1024
# Uploads whose analysis a process keeps between their requests; beyond it the oldest is
# dropped (and re-derived from disk at completion). Each holds a few KiB of profiler state.
MAX_LIVE_ANALYSES = 128
# Upload-Metadata is a few short values; a longer header is not one we would accept.
MAX_METADATA_BYTES = 8192
_METADATA_KEYS = frozenset({"session_id", "filename", *UploadOptions().fields})


class Conflict(ApiError):
    status = 409


class PreconditionFailed(ApiError):
    status = 412


class ChecksumMismatch(ApiError):
    status = 460  # tus checksum extension: "Checksum Mismatch"


class UploadLockedWhilePublishing(ApiError):
    status = 423
    retry_after = 1.0

    def __init__(self, upload_id: str) -> None:
        super().__init__(
            f"upload {upload_id} has all its bytes and is being stored; ask with HEAD shortly"
        )


class LiveAnalyses:
    """The single-pass analysis of the uploads this process is receiving, kept between
    their requests so the complete file need not be read again.

    An analysis is kept only when it has seen exactly the acknowledged bytes, and taken
    back only by a request that starts at that offset: acknowledged bytes never change, so
    it is then the analysis of the file's first ``offset`` bytes. Anything else -- another
    worker process took a request, the server restarted, bytes were rolled back -- leaves
    no usable analysis, and completion re-derives it from the bytes on disk.
    """

    def __init__(self, limit: int = MAX_LIVE_ANALYSES) -> None:
        self._limit = limit
        self._by_id: dict[str, tuple[int, UploadAnalysis]] = {}

    def take(
        self, upload_id: str, offset: int, *, analyse: bool, encoding: str | None = None
    ) -> UploadAnalysis | None:
        entry = self._by_id.pop(upload_id, None)
        if offset == 0:
            return UploadAnalysis(enabled=analyse, encoding=encoding)
        if entry is not None and entry[0] == offset:
            return entry[1]
        return None

    def keep(self, upload_id: str, offset: int, analysis: UploadAnalysis) -> None:
        self._by_id[upload_id] = (offset, analysis)
        while len(self._by_id) > self._limit:
            del self._by_id[next(iter(self._by_id))]  # the oldest (dicts keep order)


class _Live:
    """The analysis a request feeds, and the offset up to which it has seen the bytes."""

    def __init__(self, analysis: UploadAnalysis | None, offset: int) -> None:
        self.analysis = analysis
        self.offset = offset

    def usable_at(self, offset: int) -> UploadAnalysis | None:
        return self.analysis if self.offset == offset else None


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


def _require_tus(request: web.Request) -> None:
    version = request.headers.get("Tus-Resumable")
    if version != TUS_VERSION:
        raise PreconditionFailed(
            f"this server speaks tus {TUS_VERSION}: send 'Tus-Resumable: {TUS_VERSION}' "
            f"(got {version!r})",
            headers={"Tus-Version": TUS_VERSION},
        )


def _int_header(request: web.Request, name: str, *, required: bool = True) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        if required:
            raise BadRequest(f"the {name} header is required")
        return None
    # isdigit alone takes "²" and other digits int() refuses: ASCII digits only.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
        raise BadRequest(f"the {name} header must be a non-negative integer, got {raw!r}")
    return int(raw)


def parse_metadata(header: str) -> dict[str, str]:
    """``key base64,key2 base64,flag`` -> {key: text}; a key alone means an empty value."""
    if len(header) > MAX_METADATA_BYTES:
        raise BadRequest(f"Upload-Metadata is longer than {MAX_METADATA_BYTES} characters")
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


def _partials(request: web.Request) -> PartialStore:
    partials = request.app[STORE_KEY].partials
    if partials is None:
        raise NotFound("resumable uploads are not available on this server")
    return partials


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
    allowed = request.app[SETTINGS_KEY].cors_origins.split(",")
    return origin in {o.strip() for o in allowed if o.strip()}


async def create(request: web.Request) -> web.Response:
    """POST: a new upload (creation), with its first bytes if the body has them."""
    _require_tus(request)
    store: CsvStore = request.app[STORE_KEY]
    partials = _partials(request)
    limits: UploadLimits = request.app[LIMITS_KEY]
    if "Upload-Defer-Length" in request.headers:
        raise BadRequest("Upload-Defer-Length is not supported: send Upload-Length")
    length = _int_header(request, "Upload-Length")
    assert length is not None
    if length > limits.max_upload_size:
        raise PayloadTooLarge(
            f"Upload-Length {length} is larger than the limit of {limits.max_upload_size} bytes"
        )
    metadata_header = request.headers.get("Upload-Metadata", "")
    metadata = parse_metadata(metadata_header)
    session_id = _session_id(metadata)
    filename = clean_filename(_required(metadata, "filename"))
    option_values = {k: v for k, v in metadata.items() if k in UploadOptions().fields}
    opts = load(UploadOptions(), option_values, what="Upload-Metadata")
    with_upload = _has_body(request)
    if with_upload and request.content_type != OFFSET_STREAM:
        raise UnsupportedMediaType(
            f"creation-with-upload needs Content-Type: {OFFSET_STREAM}, got {request.content_type}"
        )
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    _ensure_room(store, length, limits)
    await store.require_session(session_id)
    expiry = request.app[SETTINGS_KEY].tus_expiry
    state = PartialState(
        id=uuid.uuid4().hex,
        length=length,
        offset=0,
        session_id=session_id,
        filename=filename,
        metadata=metadata_header,
        options=opts,
        created_at=utc_now(),
        expires_at=time.time() + expiry,
    )
    await partials.create(state)
    headers = {"Location": _location(state.id)}
    if with_upload or length == 0:
        # An empty file is complete at creation; otherwise the body's bytes go in now.
        try:
            state = await _run_patch(
                request, store, partials, state.id, offset=0, checksum=checksum, expiry=expiry
            )
        except Exception:
            # Refused (413, 460, ...): the answer has no Location, so no client can resume
            # or terminate this upload; what it saved goes now, not at its expiry.
            await _remove_refused(partials, state.id)
            raise
    headers |= _progress_headers(state)
    return web.Response(status=201, headers=headers)


async def _remove_refused(partials: PartialStore, upload_id: str) -> None:
    try:
        await partials.remove(upload_id)
    except Exception:  # the refusal is the answer; the expiry sweep removes it later
        log.warning("upload %s: refused at creation, not removed", upload_id, exc_info=True)


async def head(request: web.Request) -> web.Response:
    _require_tus(request)
    state = await _get(request)
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
            f"a PATCH carries Content-Type: {OFFSET_STREAM}, got {request.content_type}"
        )
    offset = _int_header(request, "Upload-Offset")
    assert offset is not None
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    upload_id = request.match_info["upload_id"]
    store: CsvStore = request.app[STORE_KEY]
    state = await _run_patch(
        request,
        store,
        _partials(request),
        upload_id,
        offset=offset,
        checksum=checksum,
        expiry=request.app[SETTINGS_KEY].tus_expiry,
    )
    return web.Response(status=204, headers=_progress_headers(state))


async def terminate(request: web.Request) -> web.Response:
    """DELETE: the partial upload and its bytes go (a completed one's record only: the
    stored file is deleted through /api/csv/files/{id})."""
    _require_tus(request)
    if not await _partials(request).remove(request.match_info["upload_id"]):
        raise _upload_not_found(request.match_info["upload_id"])
    return web.Response(status=204)


async def _get(request: web.Request) -> PartialState:
    upload_id = request.match_info["upload_id"]
    partials = _partials(request)
    state = await partials.get(upload_id)
    if state is None or (state.expires_at <= time.time() and not state.completed):
        raise _upload_not_found(upload_id)
    await _require_live_session(request.app[STORE_KEY], partials, state)
    return state


async def _require_live_session(
    store: CsvStore, partials: PartialStore, state: PartialState
) -> None:
    """An upload whose session was deleted is gone with it (the delete removes the uploads
    it can; one it could not, or created meanwhile, goes at its next request)."""
    if await store.session_exists(state.session_id):
        return
    with contextlib.suppress(UploadLocked):  # its own request finds the session gone
        await partials.remove(state.id)
    raise NotFound(f"upload {state.id!r} not found: its session {state.session_id!r} was deleted")


def _upload_not_found(upload_id: str) -> NotFound:
    return NotFound(f"upload {upload_id!r} not found: it never existed, expired or was terminated")


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
    errors = UploadForm().validate({"session_id": value, "file": b""})
    if errors:
        raise ValidationFailed(
            f"invalid session_id: {errors['session_id'][0]}",
            errors={"session_id": errors["session_id"]},
        )
    return value


def _has_body(request: web.Request) -> bool:
    if request.content_length is not None:
        return request.content_length > 0
    return request.headers.get("Transfer-Encoding", "").lower() == "chunked"


def _ensure_room(store: CsvStore, incoming: int, limits: UploadLimits) -> None:
    if not limits.min_free_space:
        return
    free = store.storage.free_bytes()
    if free is not None and free - incoming < limits.min_free_space:
        raise InsufficientStorage(
            f"not enough free disk space on the server: {free} bytes free, "
            f"{limits.min_free_space} must stay free; try again later or upload less"
        )


# Receiving bytes


async def _run_patch(
    request: web.Request,
    store: CsvStore,
    partials: PartialStore,
    upload_id: str,
    *,
    offset: int,
    checksum: tuple[str, bytes] | None,
    expiry: float,
) -> PartialState:
    """Append the body at ``offset``; complete the upload if that was its last byte.

    Runs as a task of its own, shielded from the handler's cancellation (a shutdown past
    its grace period): what arrived is saved and the lock released however the request
    ends, and a completion under way finishes its publish or removes its bytes.
    """
    state = await partials.get(upload_id)
    if state is None:
        raise _upload_not_found(upload_id)
    await _require_live_session(store, partials, state)
    if state.completed:
        if offset == state.length and not _has_body(request):
            return state  # a retry of the final request: nothing more to do
        raise Conflict(
            f"upload {upload_id} is complete ({state.length} bytes); Upload-Offset was {offset}",
            headers=_progress_headers(state),
        )
    limits: UploadLimits = request.app[LIMITS_KEY]
    task = asyncio.create_task(
        _locked_patch(request, store, partials, upload_id, offset, checksum, expiry, limits)
    )
    return await asyncio.shield(task)


async def _locked_patch(
    request: web.Request,
    store: CsvStore,
    partials: PartialStore,
    upload_id: str,
    offset: int,
    checksum: tuple[str, bytes] | None,
    expiry: float,
    limits: UploadLimits,
) -> PartialState:
    async with partials.hold(upload_id) as hold:
        if hold is None:
            current = await partials.get(upload_id)
            if current is not None and current.completed:
                raise Conflict(
                    f"upload {upload_id} is complete; Upload-Offset was {offset}",
                    headers=_progress_headers(current),
                )
            if current is not None and current.file_id is not None:
                raise UploadLockedWhilePublishing(upload_id)
            raise _upload_not_found(upload_id)
        state = hold.state
        if state.expires_at <= time.time():
            await hold.remove()
            raise _upload_not_found(upload_id)
        if hold.interrupted_publish is not None:
            done = await _settle_interrupted(store, hold, expiry)
            if done is not None:
                raise Conflict(
                    f"upload {upload_id} is complete; Upload-Offset was {offset}",
                    headers=_progress_headers(done),
                )
            state = hold.state
        if hold.has_all_bytes:
            # A completion that died after storing the file and before its row: finish it,
            # and answer as for any request to a complete upload.
            done = await _complete(store, hold, limits, expiry, None)
            raise Conflict(
                f"upload {upload_id} is complete; Upload-Offset was {offset}",
                headers=_progress_headers(done),
            )
        if offset != state.offset:
            raise Conflict(
                f"Upload-Offset {offset} does not match the upload's offset {state.offset}: "
                "ask with HEAD and resume from there",
                headers=_progress_headers(state),
            )
        length = request.content_length
        if length is not None and offset + length > state.length:
            raise PayloadTooLarge(
                f"the body would end at byte {offset + length}, past Upload-Length {state.length}"
            )
        hasher = hashlib.new(checksum[0]) if checksum else None
        analyses = request.app[ANALYSES_KEY]
        encoding = state.options.get("encoding")
        live = _Live(
            analyses.take(upload_id, offset, analyse=limits.analyse, encoding=encoding), offset
        )
        try:
            await _receive(request, store, hold, limits, hasher, expiry, live)
        except BaseException as exc:
            await _after_failed_body(hold, exc, keep=hasher is None, expiry=expiry)
            _keep_live(analyses, hold, live)
            raise
        if checksum is not None and hasher is not None and hasher.digest() != checksum[1]:
            await hold.rollback()
            raise ChecksumMismatch(
                f"Upload-Checksum ({checksum[0]}) does not match the body received; "
                f"the upload stays at offset {state.offset}",
                headers={"Upload-Offset": str(state.offset)},
            )
        if hold.received < state.length:
            saved = await hold.checkpoint(expires_at=time.time() + expiry)
            _keep_live(analyses, hold, live)
            return saved
        return await _complete(store, hold, limits, expiry, live.usable_at(hold.received))


def _keep_live(analyses: LiveAnalyses, hold: PartialHold, live: _Live) -> None:
    """Keep the analysis for the next request if it has seen exactly the acknowledged bytes
    (after a rollback or a failed write it has not, and is dropped)."""
    analysis = live.usable_at(hold.state.offset)
    if analysis is not None and not hold.pending:
        analyses.keep(hold.state.id, hold.state.offset, analysis)


async def _after_failed_body(
    hold: PartialHold, exc: BaseException, *, keep: bool, expiry: float
) -> None:
    """A body that ended early: keep what arrived (tus resumes from there), unless a checksum
    must cover the whole body or the bytes were refused."""
    if isinstance(exc, NotACsv):
        await hold.remove()
        return
    dropped = isinstance(exc, ClientGone | RequestTimeout | asyncio.CancelledError)
    if keep and dropped and hold.pending and hold.received < hold.state.length:
        try:
            await hold.checkpoint(expires_at=time.time() + expiry)
        except OSError:
            log.exception("could not save the received part of upload %s", hold.state.id)
            await hold.rollback()
        return
    await hold.rollback()


async def _receive(
    request: web.Request,
    store: CsvStore,
    hold: PartialHold,
    limits: UploadLimits,
    hasher: Any,
    expiry: float,
    live: _Live,
) -> None:
    """Append the body; feed each block to the live analysis first (when there is one), so
    a file that is not a CSV is refused at its first bad block, as a single-shot upload."""
    end = hold.state.length
    pending: list[bytes] = []
    pending_size = 0

    async def flush() -> None:
        nonlocal pending_size
        block = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        pending_size = 0
        _ensure_room(store, len(block), limits)
        if live.analysis is not None:
            try:
                live.analysis.feed(block)  # NotACsv: refused before it is written
            except BaseException:
                live.analysis = None
                raise
        if hasher is not None:
            hasher.update(block)
        try:
            await hold.append(block)
        except BaseException:
            live.analysis = None  # it has seen a block the file may not hold
            raise
        live.offset += len(block)
        if hasher is None and hold.pending >= CHECKPOINT_BYTES and hold.received < end:
            await hold.checkpoint(expires_at=time.time() + expiry)

    try:
        while True:
            chunk = await _read(request, limits)
            if not chunk:
                break
            if hold.received + pending_size + len(chunk) > end:
                raise PayloadTooLarge(f"the body goes past Upload-Length {end}")
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= limits.chunk_size:
                await flush()
    except (ClientGone, RequestTimeout, asyncio.CancelledError):
        if pending:  # what arrived before the connection dropped is kept too
            with contextlib.suppress(ApiError):
                await flush()
        raise
    if pending:
        await flush()


async def _read(request: web.Request, limits: UploadLimits) -> bytes:
    try:
        async with asyncio.timeout(limits.read_timeout):
            return await request.content.readany()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body stalled: nothing arrived for {limits.read_timeout:g} seconds"
        ) from None
    except (
        aiohttp.ClientError,
        ConnectionError,
        asyncio.IncompleteReadError,
        HttpProcessingError,
    ) as exc:
        raise ClientGone() from exc


# Completing


async def _settle_interrupted(
    store: CsvStore, hold: PartialHold, expiry: float
) -> PartialState | None:
    """A completion a crash cut short. Nobody else can be committing it (this request holds
    the upload), so its row tells: in, and the upload is complete (returned); not in, and it
    is resumable again from its acknowledged offset (None)."""
    state = hold.state
    assert state.file_id is not None
    if await store.find_file(state.file_id) is not None:
        done = replace(state, offset=state.length, completed=True, expires_at=time.time() + expiry)
        await hold.finish(done)
        return done
    await hold.abandon_publish()
    return None


def _check_expectations(options: dict[str, Any], facts: FileFacts) -> None:
    expected = options.get("sha256")
    if expected is not None:
        if facts.sha256 is None:
            raise BadRequest("digest checks need the server's hashing, which is switched off")
        if expected != facts.sha256:
            raise BadRequest(
                f"sha256 mismatch: Upload-Metadata says {expected} but the received file has "
                f"{facts.sha256}; nothing was stored"
            )
    if options.get("strict") and facts.ragged_rows:
        raise BadRequest(
            f"strict=true: {facts.ragged_rows} row(s) have a different number of fields than "
            f"the header's {facts.column_count}; nothing was stored"
        )
    if options.get("strict") and facts.invalid_bytes:
        raise NotACsv(invalid_bytes_message(facts))


async def _complete(
    store: CsvStore,
    hold: PartialHold,
    limits: UploadLimits,
    expiry: float,
    analysis: UploadAnalysis | None,
) -> PartialState:
    """Analyse and publish the complete upload; on any failure remove it (as a single-shot
    upload leaves nothing), except that a crash leaves it resumable or published."""
    state = hold.state
    file_id, key = hold.target or store.new_file_key()
    writer: StorageWriter | None = None
    started = time.monotonic()
    try:
        # The writer first: on S3 the analysis reads back the object it completes, which
        # the writer's abort removes if the file is refused.
        writer = hold.publisher(key)
        facts: FileFacts
        if analysis is not None:
            facts = analysis.finish()
        else:
            facts = await hold.analyse(
                enabled=limits.analyse,
                chunk_size=limits.chunk_size,
                encoding=state.options.get("encoding"),
            )
        analysed = time.monotonic() - started
        _check_expectations(state.options, facts)
        # Recorded before the publish: a crash after it can tell a published upload from
        # a lost one by looking for this id in the database.
        await hold.save(replace(state, file_id=file_id, publish_key=key))
        crash_point("tus.publishing_saved")
        published: Published = await store.publish_upload(
            writer,
            file_id=file_id,
            session_id=state.session_id,
            original_filename=state.filename,
            facts=facts,
            dedupe=bool(state.options.get("dedupe")),
        )
        writer = None  # publish_upload owned it, and removed the bytes on failure
        crash_point("tus.row_committed")
    except BaseException as exc:
        if isinstance(exc, DependencyUnavailable) or storage_unavailable(exc) is not None:
            # The database or storage is away, not the file at fault: the upload stays as a
            # crash would leave it, and its next request settles it (complete, or resumable
            # at its acknowledged offset).
            raise
        if writer is not None:
            await writer.abort()
        await hold.remove()
        raise
    done = replace(
        state,
        offset=state.length,
        completed=True,
        file_id=published.file.id,
        expires_at=time.time() + expiry,
    )
    await hold.finish(done)
    log.info(
        "tus upload %s complete: file %s; %d bytes %s in %.2f s, published in %.2f s",
        state.id,
        done.file_id,
        state.length,
        "analysed while received, finished" if analysis is not None else "re-read and analysed",
        analysed,
        time.monotonic() - started - analysed,
    )
    return done


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


async def sweep_expired_forever(
    partials: PartialStore, interval: float, now: Callable[[], float] = time.time
) -> None:
    while True:
        try:
            removed = await partials.sweep_expired(now())
        except Exception:  # retried next time; the service goes on
            log.exception("sweep of expired resumable uploads failed")
        else:
            if removed:
                log.info("removed %d expired resumable upload(s)", removed)
        await asyncio.sleep(interval)


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    partials = app[STORE_KEY].partials
    if partials is None:
        yield
        return
    task = asyncio.create_task(
        sweep_expired_forever(partials, app[SETTINGS_KEY].sweep_interval),
        name="tus-expiry-sweeper",
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


ANALYSES_KEY = web.AppKey("tus_analyses", LiveAnalyses)


def setup_tus(app: web.Application) -> None:
    """The header every tus response carries, the analyses kept between requests, the
    sweeper of abandoned uploads, and the endpoint without its trailing slash (the routes
    themselves are in routes.py)."""
    app[ANALYSES_KEY] = LiveAnalyses()
    app.on_response_prepare.append(add_tus_resumable)
    app.cleanup_ctx.append(_sweeper)
    bare = TUS_ROOT.rstrip("/")
    app.router.add_route("POST", bare, create)
    app.router.add_route("OPTIONS", bare, options)
