"""The tus engine without HTTP: bytes appended under the upload's lock, then the complete
upload analysed and published as a single-shot one. See docs/design/resumable.md."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from csvstore.analysis.stream import FileFacts, UploadAnalysis
from csvstore.crashpoints import crash_point
from csvstore.errors import (
    ChecksumMismatch,
    ClientGone,
    CsvstoreError,
    DependencyUnavailable,
    FileNotFound,
    NotACsv,
    NotFound,
    OffsetConflict,
    RequestTimeout,
    UploadBeingStored,
    UploadLocked,
    UploadNotFound,
    UploadTooLarge,
    storage_unavailable,
)
from csvstore.resumable.events import TusEvents, Unobserved
from csvstore.resumable.local import (
    LocalHold,
    LocalPartialStore,
    PartialHold,
    PartialState,
    PartialStore,
    usual_metadata,
)
from csvstore.service import CsvStore, Published
from csvstore.storage.local import HELD_BLOCK, JOURNAL_MAX, StorageWriter
from csvstore.timeutil import utc_now
from csvstore.uploads import (
    BlockPipeline,
    UploadLimits,
    bounded,
    check_expectations,
    ensure_room,
)

log = logging.getLogger("csvstore.tus")

# A long PATCH makes what it received durable every so often: a crash loses at most this.
CHECKPOINT_BYTES = 64 * 1024 * 1024
# A creation carrying a whole file up to this size skips the partial store (_create_whole).
WHOLE_MAX = HELD_BLOCK
# Analyses kept between requests (a few KiB each); beyond, the oldest is re-derived.
MAX_LIVE_ANALYSES = 128


class Conflict(OffsetConflict):
    """With the upload's state, which the protocol reports beside the refusal."""

    def __init__(self, detail: str, state: PartialState) -> None:
        super().__init__(detail)
        self.state = state


class ChecksumMismatchAt(ChecksumMismatch):
    def __init__(self, detail: str, offset: int) -> None:
        super().__init__(detail)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Body:
    """A request's bytes for an upload, and what its headers said of them."""

    chunks: AsyncIterable[bytes]
    declared: int | None = None
    present: bool = True  # False: a request without a body
    checksum: tuple[str, bytes] | None = None  # (algorithm, digest) of the whole body


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class LiveAnalyses:
    """Analyses kept between requests: each has seen exactly the acknowledged bytes, and is
    taken back only at that offset (else completion re-reads the file)."""

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
    def __init__(self, analysis: UploadAnalysis | None, offset: int) -> None:
        self.analysis = analysis
        self.offset = offset

    def usable_at(self, offset: int) -> UploadAnalysis | None:
        return self.analysis if self.offset == offset else None


async def _settle(blocks: BlockPipeline, live: _Live, *, quietly: bool = False) -> None:
    """The block in flight, stored; if it failed, the analysis is dropped (it has seen bytes
    the upload does not hold) and, ``quietly``, the error already on its way stays the one."""
    try:
        await blocks.settle()
    except BaseException:
        live.analysis = None
        if not quietly:
            raise


class ResumableUploads:
    """The service's resumable uploads, for the tus handlers (web/tus.py)."""

    def __init__(
        self,
        store: CsvStore,
        partials: PartialStore | None,
        limits: UploadLimits,
        expiry: float,
        events: TusEvents | None = None,
    ) -> None:
        self.store = store
        self.partials = partials
        self.limits = limits
        self.expiry = expiry
        self.analyses = LiveAnalyses()
        self.events: TusEvents = events or Unobserved()

    @classmethod
    def of(
        cls,
        store: CsvStore,
        limits: UploadLimits,
        expiry: float,
        events: TusEvents | None = None,
    ) -> ResumableUploads:
        return cls(store, store.partials, limits, expiry, events)

    @property
    def available(self) -> bool:
        return self.partials is not None

    def require(self) -> PartialStore:
        if self.partials is None:
            raise NotFound("resumable uploads are not available on this server")
        return self.partials

    async def create(
        self,
        *,
        length: int,
        session_id: str,
        filename: str,
        metadata: str,
        options: dict[str, Any],
        first: Body | None = None,
    ) -> PartialState:
        partials = self.require()
        ensure_room(self.store, length, self.limits)
        state = PartialState(
            id=uuid.uuid4().hex,
            length=length,
            offset=0,
            session_id=session_id,
            filename=filename,
            metadata=metadata,
            options=options,
            created_at=utc_now(),
            expires_at=time.time() + self.expiry,
        )
        # An empty file is whole at creation, body or not: its file id the upload id too.
        if (
            (first is not None or length == 0)
            and length <= WHOLE_MAX
            and isinstance(partials, LocalPartialStore)
        ):
            data = await self._buffer(first, length) if first is not None else b""
            if len(data) == length:  # the row's insert checks the session, as for multipart
                return await self._create_whole(partials, state, data)
            first = Body(_once(data), len(data))  # the rest comes by PATCH: a partial upload
        await self.store.require_session(session_id)
        await partials.create(state)
        if first is None and length:
            self.events.created()
            return state
        try:
            done = await self._patch(state.id, 0, first or Body(_nothing(), 0, present=False))
        except Exception:
            # Refused: the client never learns the upload's address, so it goes now.
            await self._remove_refused(state.id)
            raise
        self.events.created()
        return done

    async def _buffer(self, body: Body, length: int) -> bytes:
        """A small creation's body, checked against its checksum; nothing is stored yet."""

        def too_long() -> UploadTooLarge:
            return UploadTooLarge(f"the body goes past Upload-Length {length}")

        chunks = bounded(body.chunks, length, too_long)
        async with contextlib.aclosing(chunks):
            data = b"".join([chunk async for chunk in chunks])
        checksum = body.checksum
        if checksum is not None and hashlib.new(checksum[0], data).digest() != checksum[1]:
            raise ChecksumMismatchAt(
                f"Upload-Checksum ({checksum[0]}) does not match the body received; "
                "nothing was stored",
                0,
            )
        return data

    async def _create_whole(
        self, partials: LocalPartialStore, state: PartialState, data: bytes
    ) -> PartialState:
        """A whole file in its creation: published as a multipart upload, its file id the
        upload id, so the row answers a later HEAD (docs/design/resumable.md)."""
        analysis = UploadAnalysis(
            enabled=self.limits.analyse, encoding=state.options.get("encoding")
        )
        analysis.feed(data)
        facts = analysis.finish()
        _check(state, facts)
        file_id, writer = await self.store.begin_upload(str(uuid.UUID(state.id)))
        try:
            await writer.write(data)
        except BaseException:
            await writer.abort()
            raise
        published = await self._publish(writer, file_id, state, facts)
        crash_point("tus.whole_published")
        done = self._completed(state, published.file.id, made=not published.duplicate)
        # HEAD echoes Upload-Metadata: the row rebuilds the usual one, a state file keeps others.
        if published.duplicate or state.metadata != usual_metadata(
            state.session_id, state.filename
        ):
            try:
                partials.record_completed(done)
            except OSError:  # stored all the same: HEAD answers from the row
                log.warning("upload %s: its state was not recorded", state.id, exc_info=True)
        self.events.created()
        self.events.finished()
        return done

    async def _completed_by_row(self, upload_id: str) -> PartialState | None:
        """A whole creation without a state (or a power cut lost it): its row, until expiry."""
        try:
            file_id = str(uuid.UUID(hex=upload_id))
        except ValueError:
            return None
        origin = await self.store.file_origin(file_id)
        if origin is None:
            return None
        size, filename, created_at, session_id = origin
        created = datetime.fromisoformat(created_at).timestamp()
        if created + self.expiry <= time.time():
            return None
        return PartialState(
            id=upload_id,
            length=size,
            offset=size,
            session_id=session_id,
            filename=filename,
            metadata=usual_metadata(session_id, filename),
            options={},
            created_at=created_at,
            expires_at=created + self.expiry,
            file_id=file_id,
            completed=True,
            made_file=True,  # its id is the upload's
        )

    async def _remove_refused(self, upload_id: str) -> None:
        try:
            await self.require().remove(upload_id)
        except Exception:  # the refusal is the answer; the expiry sweep removes it later
            log.warning("upload %s: refused at creation, not removed", upload_id, exc_info=True)

    async def state(self, upload_id: str) -> PartialState:
        partials = self.require()
        state = await partials.get(upload_id)
        if state is None and (done := await self._completed_by_row(upload_id)) is not None:
            return done
        if state is None or (state.expires_at <= time.time() and not state.completed):
            raise _upload_not_found(upload_id)
        if state.completed and state.file_id and not await self.store.is_published(state.file_id):
            # Its file was deleted: the upload is gone too, not a pointer to nothing.
            raise _upload_not_found(upload_id)
        await self._require_live_session(state)
        return state

    async def terminate(self, upload_id: str) -> None:
        """tus's termination frees what the upload holds: its bytes, or once complete the file
        it made (as tusd and @tus/server delete a finished upload's data), then its record;
        in that order, so that a failure leaves a DELETE to send again."""
        partials = self.require()
        state = await partials.get(upload_id)
        done = await self._completed_by_row(upload_id) if state is None else state
        if done is not None and done.completed and done.made_file and done.file_id is not None:
            with contextlib.suppress(FileNotFound):  # deleted through /api/csv/files already
                await self.store.delete_file(done.file_id)
        removed = await partials.remove(upload_id)
        if not removed and done is None:
            raise _upload_not_found(upload_id)
        self.events.terminated()

    async def _require_live_session(self, state: PartialState) -> None:
        if await self.store.session_exists(state.session_id):
            return
        with contextlib.suppress(UploadLocked):  # its own request finds the session gone
            await self.require().remove(state.id)
        raise UploadNotFound(
            f"upload {state.id!r} not found: its session {state.session_id!r} was deleted"
        )

    async def patch(self, upload_id: str, offset: int, body: Body) -> PartialState:
        try:
            state = await self._patch(upload_id, offset, body)
        except CsvstoreError as exc:
            self.events.patched(exc.reason)
            raise
        except (ClientGone, asyncio.CancelledError):
            self.events.patched("interrupted")
            raise
        except Exception:
            self.events.patched("error")
            raise
        self.events.patched("completed" if state.completed else "partial")
        return state

    async def _patch(self, upload_id: str, offset: int, body: Body) -> PartialState:
        """Append the body at ``offset``, completing the upload at its last byte; shielded, so
        however the request ends what arrived is saved and the lock released."""
        partials = self.require()
        state = await partials.get(upload_id)
        if state is None:
            state = await self._completed_by_row(upload_id)
            if state is None:
                raise _upload_not_found(upload_id)
        else:
            await self._require_live_session(state)
        if state.completed:
            if offset == state.length and not body.present:
                return state  # a retry of the final request: nothing more to do
            raise Conflict(
                f"upload {upload_id} is complete ({state.length} bytes); "
                f"Upload-Offset was {offset}",
                state,
            )
        task = asyncio.create_task(self._locked_patch(partials, upload_id, offset, body))
        return await asyncio.shield(task)

    async def _locked_patch(
        self, partials: PartialStore, upload_id: str, offset: int, body: Body
    ) -> PartialState:
        async with partials.hold(upload_id) as hold:
            if hold is None:
                current = await partials.get(upload_id)
                if current is not None and current.completed:
                    raise _complete_conflict(upload_id, offset, current)
                if current is not None and current.file_id is not None:
                    raise UploadBeingStored(upload_id)
                raise _upload_not_found(upload_id)
            state = hold.state
            if state.expires_at <= time.time():
                await hold.remove()
                raise _upload_not_found(upload_id)
            if hold.interrupted_publish is not None:
                done = await self._settle_interrupted(hold)
                if done is not None:
                    raise _complete_conflict(upload_id, offset, done)
                state = hold.state
            if hold.has_all_bytes:
                # A completion that died after storing the file, before its row: finish it.
                done = await self._complete(hold, None)
                raise _complete_conflict(upload_id, offset, done)
            if offset != state.offset:
                raise Conflict(
                    f"Upload-Offset {offset} does not match the upload's offset "
                    f"{state.offset}: ask with HEAD and resume from there",
                    state,
                )
            if body.declared is not None and offset + body.declared > state.length:
                raise UploadTooLarge(
                    f"the body would end at byte {offset + body.declared}, "
                    f"past Upload-Length {state.length}"
                )
            checksum = body.checksum
            hasher = hashlib.new(checksum[0]) if checksum else None
            encoding = state.options.get("encoding")
            analysis = self.analyses.take(
                upload_id, offset, analyse=self.limits.analyse, encoding=encoding
            )
            live = _Live(analysis, offset)
            try:
                await self._receive(body.chunks, hold, hasher, live)
            except BaseException as exc:
                await self._after_failed_body(hold, exc, keep=hasher is None)
                self._keep_live(hold, live)
                raise
            if checksum is not None and hasher is not None and hasher.digest() != checksum[1]:
                await hold.rollback()
                raise ChecksumMismatchAt(
                    f"Upload-Checksum ({checksum[0]}) does not match the body received; "
                    f"the upload stays at offset {state.offset}",
                    state.offset,
                )
            if hold.received < state.length:
                saved = await hold.checkpoint(expires_at=time.time() + self.expiry, last=True)
                self._keep_live(hold, live)
                return saved
            return await self._complete(hold, live.usable_at(hold.received))

    def _keep_live(self, hold: PartialHold, live: _Live) -> None:
        """Keep the analysis if it has seen exactly the acknowledged bytes."""
        analysis = live.usable_at(hold.state.offset)
        if analysis is not None and not hold.pending:
            self.analyses.keep(hold.state.id, hold.state.offset, analysis)

    async def _after_failed_body(
        self, hold: PartialHold, exc: BaseException, *, keep: bool
    ) -> None:
        """A body that ended early: keep what arrived (tus resumes from there), unless a
        checksum must cover the whole body or the bytes were refused."""
        if isinstance(exc, NotACsv):
            await hold.remove()
            return
        dropped = isinstance(exc, ClientGone | RequestTimeout | asyncio.CancelledError)
        if keep and dropped and hold.pending and hold.received < hold.state.length:
            try:
                await hold.checkpoint(expires_at=time.time() + self.expiry)
            except OSError:
                log.exception("could not save the received part of upload %s", hold.state.id)
                await hold.rollback()
            return
        await hold.rollback()

    async def _receive(
        self, body: AsyncIterable[bytes], hold: PartialHold, hasher: Any, live: _Live
    ) -> None:
        """Append the body; each block goes through the live analysis first, so a file that
        is not a CSV is refused at its first bad block, as a single-shot upload."""
        end = hold.state.length
        pending: list[bytes] = []
        pending_size = 0

        async def stored(size: int) -> None:
            live.offset += size
            self.events.received(size)
            if hasher is None and hold.pending >= CHECKPOINT_BYTES and hold.received < end:
                await hold.checkpoint(expires_at=time.time() + self.expiry)

        blocks = BlockPipeline(hold.append, live.analysis, hasher, stored, lag=not hold.holds_parts)

        async def flush() -> None:
            nonlocal pending_size
            block = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            pending_size = 0
            ensure_room(self.store, len(block), self.limits)
            try:
                await blocks.push(block)
            except BaseException:
                # Refused (NotACsv: before it was written) or not stored: the analysis has
                # seen bytes the upload may not hold.
                live.analysis = None
                raise

        def too_long() -> UploadTooLarge:
            return UploadTooLarge(f"the body goes past Upload-Length {end}")

        chunks = bounded(body, end - hold.received, too_long)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= self.limits.chunk_size:
                        await flush()
            if pending:
                await flush()
        except (ClientGone, RequestTimeout, asyncio.CancelledError):
            # What arrived is kept; settled even if flush fails: no write may race the checkpoint.
            with contextlib.suppress(CsvstoreError):
                try:
                    if pending:
                        await flush()
                finally:
                    await _settle(blocks, live)
            raise
        except BaseException:
            await _settle(blocks, live, quietly=True)  # the error that ended the body is raised
            raise
        await _settle(blocks, live)

    async def _settle_interrupted(self, hold: PartialHold) -> PartialState | None:
        """A completion a crash cut short; this request holds the upload, so its row tells:
        in, and it is complete (returned); not in, and it is resumable again (None)."""
        state = hold.state
        assert state.file_id is not None
        if await self.store.find_file(state.file_id) is not None:
            done = replace(
                state,
                offset=state.length,
                completed=True,
                expires_at=time.time() + self.expiry,
            )
            await hold.finish(done)
            return done
        await hold.abandon_publish()
        return None

    async def _complete(self, hold: PartialHold, analysis: UploadAnalysis | None) -> PartialState:
        """Analyse and publish the complete upload; on any failure remove it (as a single-shot
        upload leaves nothing), except that a crash leaves it resumable or published."""
        state = hold.state
        if (small := LocalPartialStore.small(hold, JOURNAL_MAX)) is not None:
            return await self._complete_small(small, analysis)
        file_id, key = hold.target or self.store.new_file_key()
        writer: StorageWriter | None = None
        started = time.monotonic()
        try:
            # The writer first: on S3 the analysis reads back the object it completes.
            writer = hold.publisher(key)
            facts: FileFacts
            if analysis is not None:
                facts = analysis.finish()
            else:
                facts = await hold.analyse(
                    enabled=self.limits.analyse,
                    chunk_size=self.limits.chunk_size,
                    encoding=state.options.get("encoding"),
                )
            analysed = time.monotonic() - started
            _check(state, facts)
            # Before the publish: after a crash, this id in the database tells it happened.
            await hold.save(replace(state, file_id=file_id, publish_key=key))
            crash_point("tus.publishing_saved")
            published: Published = await self._publish(writer, file_id, state, facts)
            writer = None  # publish_upload owned it, and removed the bytes on failure
            crash_point("tus.row_committed")
        except BaseException as exc:
            if isinstance(exc, DependencyUnavailable) or storage_unavailable(exc) is not None:
                # Not the file's fault: left as a crash would leave it, for the next request.
                raise
            if writer is not None:
                await writer.abort()
            await hold.remove()
            raise
        done = self._completed(state, published.file.id, made=not published.duplicate)
        await hold.finish(done)
        self.events.finished()
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

    async def _complete_small(
        self, hold: LocalHold, analysis: UploadAnalysis | None
    ) -> PartialState:
        """Journaled as a small multipart upload under the upload id: the row says it was
        published, so no state is saved before it nor fsynced after."""
        state = hold.state
        file_id = str(uuid.UUID(state.id))
        writer: StorageWriter | None = None
        try:
            # A row already: published before a crash took the completed state.
            if await self.store.find_file(file_id) is None:
                data = await hold.contents()
                if analysis is None:
                    analysis = UploadAnalysis(
                        enabled=self.limits.analyse,
                        encoding=state.options.get("encoding"),
                    )
                    analysis.feed(data)
                facts = analysis.finish()
                _check(state, facts)
                file_id, writer = await self.store.begin_upload(file_id)
                await writer.write(data)
                published = await self._publish(writer, file_id, state, facts)
                writer = None
                file_id = published.file.id
                crash_point("tus.row_committed")
        except BaseException as exc:
            if isinstance(exc, DependencyUnavailable) or storage_unavailable(exc) is not None:
                raise
            if writer is not None:
                await writer.abort()
            await hold.remove()
            raise
        done = self._completed(state, file_id, made=file_id == str(uuid.UUID(state.id)))
        await hold.finish(done, durable=False)
        self.events.finished()
        return done

    async def _publish(
        self, writer: StorageWriter, file_id: str, state: PartialState, facts: FileFacts
    ) -> Published:
        return await self.store.publish_upload(
            writer,
            file_id=file_id,
            session_id=state.session_id,
            original_filename=state.filename,
            facts=facts,
            dedupe=bool(state.options.get("dedupe")),
        )

    def _completed(self, state: PartialState, file_id: str | None, *, made: bool) -> PartialState:
        return replace(
            state,
            offset=state.length,
            completed=True,
            file_id=file_id,
            made_file=made,
            expires_at=time.time() + self.expiry,
        )

    async def sweep_forever(self, interval: float, now: Callable[[], float] = time.time) -> None:
        partials = self.require()
        while True:
            try:
                removed = await partials.sweep_expired(now())
            except Exception:  # retried next time; the service goes on
                log.exception("sweep of expired resumable uploads failed")
            else:
                if removed:
                    self.events.expired(removed)
                    log.info("removed %d expired resumable upload(s)", removed)
            await asyncio.sleep(interval)


def _complete_conflict(upload_id: str, offset: int, state: PartialState) -> Conflict:
    return Conflict(f"upload {upload_id} is complete; Upload-Offset was {offset}", state)


def _upload_not_found(upload_id: str) -> UploadNotFound:
    return UploadNotFound(
        f"upload {upload_id!r} not found: it never existed, expired or was terminated"
    )


def _check(state: PartialState, facts: FileFacts) -> None:
    """The client's expectations of a complete upload (a digest, strict mode)."""
    check_expectations(
        facts,
        digests={"Upload-Metadata": state.options.get("sha256")},
        strict=bool(state.options.get("strict")),
    )
