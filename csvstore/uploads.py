"""The checks every upload passes, multipart or resumable: limits, free space, the client's
expectations, and a bound on the bytes read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
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


async def analyse_block(analysis: UploadAnalysis | None, hasher: Any, block: bytes) -> None:
    """Feed a block to the analysis and a hasher; a large one in a thread (the hashes and
    the C counter let go of the GIL), so that the event loop goes on receiving meanwhile."""

    def run() -> None:
        if analysis is not None:
            analysis.feed(block)
        if hasher is not None:
            hasher.update(block)

    if len(block) < THREAD_MIN:
        run()
    else:
        await asyncio.to_thread(run)


# Below this, thread hops cost more than they free the event loop.
THREAD_MIN = 256 * 1024
