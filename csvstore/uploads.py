"""What every upload shares, multipart or resumable: limits, free space, the client's
expectations, a bound on the bytes read, and the pipeline its blocks take to storage."""

from __future__ import annotations

import asyncio
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


class BlockPipeline:
    """Blocks on their way to storage, multipart or tus. Each is inspected on the event loop
    first, so a block that is not CSV text is refused before any of it is written. A large
    block is then written and hashed in threads while the next one is received and
    inspected; at most one is in flight, so blocks stay in order. ``after(size)`` runs once
    a block is stored (tus counts and checkpoints there)."""

    def __init__(
        self,
        write: Callable[[bytes], Awaitable[None]],
        analysis: UploadAnalysis | None,
        hasher: Any = None,
        after: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.analysis = analysis
        self._write = write
        self._hasher = hasher
        self._after = after
        self._in_flight: asyncio.Future[list[Any]] | None = None
        self._in_flight_size = 0

    async def push(self, block: bytes) -> None:
        if len(block) < OVERLAP_MIN:
            await self.settle()
            self._inspect(block)
            self._digest(block)
            await self._write(block)
            await self._stored(len(block))
            return
        self._inspect(block)  # while the previous block is written and hashed
        await self.settle()
        # Both to threads now: a task would only start at the next wait, too late.
        jobs: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._write(block))]
        if self.analysis is not None or self._hasher is not None:
            loop = asyncio.get_running_loop()
            jobs.append(loop.run_in_executor(None, self._digest, block))
        self._in_flight = asyncio.gather(*jobs, return_exceptions=True)
        self._in_flight_size = len(block)
        await asyncio.sleep(0)  # the write task's first step, which submits its thread hop

    async def settle(self) -> None:
        """Wait for the block in flight (also before an abort); raise what it raised."""
        in_flight = self._in_flight
        if in_flight is None:
            return
        # Shielded: the threads go on anyway; still in flight, the discard waits for it again.
        outcomes = await asyncio.shield(in_flight)
        self._in_flight = None
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        await self._stored(self._in_flight_size)

    def _inspect(self, block: bytes) -> None:
        if self.analysis is not None:
            self.analysis.inspect(block)

    def _digest(self, block: bytes) -> None:
        if self.analysis is not None:
            self.analysis.digest(block)
        if self._hasher is not None:
            self._hasher.update(block)

    async def _stored(self, size: int) -> None:
        if self._after is not None:
            await self._after(size)


# Below this, thread hops cost more than the overlap saves.
OVERLAP_MIN = 256 * 1024
