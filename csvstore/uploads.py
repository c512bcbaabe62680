"""What every upload shares, multipart or resumable: limits, free space, the client's
expectations, a bound on the bytes read, and the pipeline its blocks take to storage."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from csvstore.analysis.content import invalid_bytes_message
from csvstore.analysis.stream import FileFacts, UploadAnalysis
from csvstore.errors import BadRequest, InsufficientStorage, NotACsv


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_upload_size: int
    chunk_size: int
    read_timeout: float
    analyse: bool = True
    min_free_space: int = 0


class FreeSpace(Protocol):
    def free_bytes(self) -> int | None: ...


def ensure_room(space: FreeSpace, incoming: int, limits: UploadLimits) -> None:
    """507 unless ``min_free_space`` stays free after ``incoming`` more bytes."""
    if not limits.min_free_space:
        return
    free = space.free_bytes()
    if free is not None and free - incoming < limits.min_free_space:
        raise InsufficientStorage(
            f"not enough free disk space on the server: {free} bytes free, "
            f"{limits.min_free_space} must stay free; try again later or upload less"
        )


def check_expectations(
    facts: FileFacts, *, digests: Mapping[str, str | None], strict: bool
) -> None:
    """The client's digests (by where they came from) and strictness, before publishing."""
    for source, digest in digests.items():
        if digest is None:
            continue
        if facts.sha256 is None:
            raise BadRequest("digest checks need the server's hashing, which is switched off")
        if digest != facts.sha256:
            raise BadRequest(
                f"sha256 mismatch: {source} says {digest} but the received file has "
                f"{facts.sha256}; nothing was stored"
            )
    if strict and facts.ragged_rows:
        raise BadRequest(
            f"strict=true: {facts.ragged_rows} row(s) have a different number of fields than "
            f"the header's {facts.column_count}; nothing was stored"
        )
    if strict and facts.invalid_bytes:
        raise NotACsv(invalid_bytes_message(facts))


async def bounded(
    chunks: AsyncIterable[bytes], limit: int, too_large: Callable[[], Exception]
) -> AsyncGenerator[bytes, None]:
    """The chunks, until more than ``limit`` bytes came: then ``too_large()`` is raised."""
    left = limit
    async for chunk in chunks:
        left -= len(chunk)
        if left < 0:
            raise too_large()
        yield chunk


class SerialLane:
    """Jobs run in order on the default executor: a thread per upload costs a malloc arena."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = (
            deque()
        )
        self._running = False

    def submit(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._queue.append((function, args, future))
            start, self._running = not self._running, True
        if start:
            loop.run_in_executor(None, self._drain, loop)
        return future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                function, args, future = self._queue.popleft()
            try:
                outcome: tuple[Any, BaseException | None] = (function(*args), None)
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(_settle_future, future, *outcome)


def _settle_future(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class BlockPipeline:
    """Blocks on their way to storage: each checked on the event loop (so a block that is
    not CSV text is never written), then written in a thread while the next one arrives.
    Hashing and profiling run in a lane that may fall behind the writes, within
    LANE_BACKLOG_BYTES (docs/performance.md). ``after(size)``: once a block is stored."""

    def __init__(
        self,
        write: Callable[[bytes], Awaitable[None]],
        analysis: UploadAnalysis | None,
        hasher: Any = None,
        after: Callable[[int], Awaitable[None]] | None = None,
        *,
        lag: bool = True,
    ) -> None:
        self.analysis = analysis
        self._backlog = LANE_BACKLOG_BYTES if lag else 0
        self._write = write
        self._hasher = hasher
        self._after = after
        self._in_flight: asyncio.Future[Any] | None = None
        self._in_flight_size = 0
        self._lane = SerialLane()
        self._behind: deque[asyncio.Future[Any]] = deque()
        self._lane_last: _LaneBlock | None = None

    async def push(self, block: bytes) -> None:
        counted = self._check(block)
        if len(block) < OVERLAP_MIN:
            await self.settle()
            self._analyse(block, counted)
            await self._write(block)
            await self._stored(len(block))
            return
        await self._settle_write()
        # To a thread now: a task would only start at the next wait, too late.
        self._in_flight = asyncio.ensure_future(self._write(block))
        self._in_flight_size = len(block)
        if self.analysis is not None or self._hasher is not None:
            await self._to_lane(block, counted)
        await asyncio.sleep(0)  # the write task's first step, which submits its thread hop

    async def settle(self) -> None:
        """Wait for the write in flight and the lane (also before an abort); raise their errors."""
        try:
            await self._settle_write()
        finally:
            await self._settle_lane()

    async def _to_lane(self, block: bytes, counted: list[bytes]) -> None:
        if self._lane_last is not None:  # written, maybe not analysed yet: counted if so
            LANE_BACKLOG.hold(self._lane_last)
        self._lane_last = _LaneBlock(len(block))
        self._behind.append(self._lane.submit(self._analyse, block, counted, self._lane_last))
        # Submitted before any wait: a cancelled wait cannot leave a written block unhashed.
        while self._behind and self._behind[0].done():
            self._behind.popleft().result()
        while len(self._behind) > 1 and LANE_BACKLOG.held > self._backlog:
            await asyncio.shield(self._behind[0])
            self._behind.popleft().result()

    async def _settle_write(self) -> None:
        in_flight = self._in_flight
        if in_flight is None:
            return
        # Shielded: the thread goes on anyway; still in flight, the discard waits for it again.
        try:
            await asyncio.shield(in_flight)
        finally:
            if in_flight.done():
                self._in_flight = None
        await self._stored(self._in_flight_size)

    async def _settle_lane(self) -> None:
        if self._behind:
            # Shielded: on a cancel the jobs go on; the discard's settle waits for them again.
            await asyncio.shield(asyncio.gather(*self._behind, return_exceptions=True))
        jobs, self._behind = self._behind, deque()
        for job in jobs:
            job.result()

    def _check(self, block: bytes) -> list[bytes]:
        return self.analysis.check(block) if self.analysis is not None else []

    def _analyse(self, block: bytes, counted: list[bytes], entry: _LaneBlock | None = None) -> None:
        try:
            if self.analysis is not None:
                self.analysis.profile(counted)
                self.analysis.digest(block)
            if self._hasher is not None:
                self._hasher.update(block)
        finally:
            if entry is not None:
                LANE_BACKLOG.release(entry)

    async def _stored(self, size: int) -> None:
        if self._after is not None:
            await self._after(size)


# Below this, thread hops cost more than the overlap saves.
OVERLAP_MIN = 256 * 1024
# How far, in bytes across the process, hashing may fall behind the writes.
LANE_BACKLOG_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class _LaneBlock:
    size: int
    held: bool = False
    analysed: bool = False


class _LaneBacklog:
    """Bytes of written blocks waiting in lanes (released by the lane's thread, loop or not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held = 0

    def hold(self, entry: _LaneBlock) -> None:
        with self._lock:
            if not entry.analysed and not entry.held:
                entry.held = True
                self.held += entry.size

    def release(self, entry: _LaneBlock) -> None:
        with self._lock:
            entry.analysed = True
            if entry.held:
                self.held -= entry.size


LANE_BACKLOG = _LaneBacklog()
