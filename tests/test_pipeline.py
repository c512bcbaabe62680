"""The block pipeline both upload paths share (csvstore/uploads.py): writes in order, and
hashing and profiling in a lane of their own that may fall behind the writes, within a
bound, and is caught up before anything is answered."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path

import pytest

from csvstore.analysis.stream import UploadAnalysis
from csvstore.uploads import (
    LANE_BACKLOG,
    LANE_BACKLOG_BYTES,
    OVERLAP_MIN,
    BlockPipeline,
    SerialLane,
)


async def test_a_serial_lane_runs_its_jobs_in_order_and_one_at_a_time() -> None:
    lane = SerialLane()
    ran: list[int] = []
    running = [0, 0]  # now, most at once
    lock = threading.Lock()

    def job(n: int) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.001)
        ran.append(n)
        with lock:
            running[0] -= 1
        return n * n

    futures = [lane.submit(job, n) for n in range(40)]
    assert await asyncio.gather(*futures) == [n * n for n in range(40)]
    assert ran == list(range(40))
    assert running[1] == 1


async def test_a_serial_lane_hands_a_job_s_error_to_its_future_and_goes_on() -> None:
    lane = SerialLane()

    def fail() -> None:
        raise ValueError("bad block")

    failing = lane.submit(fail)
    after = lane.submit(lambda: "next")
    with pytest.raises(ValueError, match="bad block"):
        await failing
    assert await after == "next"


class _GatedSha256:
    """SHA-256 that waits for a gate before each block: a lane that cannot keep up."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.sha = hashlib.sha256()

    def update(self, data: bytes) -> None:
        assert self.gate.wait(30)
        self.sha.update(data)


def _recording_pipeline(
    hasher: _GatedSha256, *, lag: bool = True
) -> tuple[BlockPipeline, list[bytes]]:
    """A pipeline whose writes are kept in the returned list, hashed by ``hasher``."""
    written: list[bytes] = []

    async def write(block: bytes) -> None:
        written.append(block)

    return BlockPipeline(write, None, hasher, lag=lag), written


async def test_hashing_falls_behind_the_writes_only_as_far_as_the_backlog_allows() -> None:
    block_size = 1024 * 1024
    assert block_size >= OVERLAP_MIN
    blocks = [bytes([65 + n]) * block_size for n in range(12)]
    hasher = _GatedSha256()
    pipeline, written = _recording_pipeline(hasher)
    pushed = 0

    async def push_all() -> None:
        nonlocal pushed
        for block in blocks:
            await pipeline.push(block)
            pushed += 1

    task = asyncio.create_task(push_all())
    try:
        await asyncio.sleep(0.3)
        # The lane holds the block it hashes and written blocks within the bound; the next
        # push has its block written and waits. Before the lane, each push waited for the
        # block before it to be hashed.
        assert pushed == LANE_BACKLOG_BYTES // block_size + 1
        assert written == blocks[: pushed + 1]
        assert LANE_BACKLOG.held <= LANE_BACKLOG_BYTES + block_size
    finally:
        hasher.gate.set()
    await asyncio.wait_for(task, 30)
    await pipeline.settle()
    assert written == blocks
    assert hasher.sha.digest() == hashlib.sha256(b"".join(blocks)).digest()
    assert LANE_BACKLOG.held == 0


async def test_without_lag_the_lane_holds_no_written_block_beyond_the_one_written_now() -> None:
    # S3 writers and holds keep a part in memory already (storage.holds_parts): no backlog.
    hasher = _GatedSha256()
    pipeline, _ = _recording_pipeline(hasher, lag=False)
    await pipeline.push(b"a" * OVERLAP_MIN)
    second = asyncio.create_task(pipeline.push(b"b" * OVERLAP_MIN))
    await asyncio.sleep(0.2)
    assert not second.done()  # the first block is still being hashed
    hasher.gate.set()
    await asyncio.wait_for(second, 10)
    await pipeline.settle()
    assert hasher.sha.digest() == hashlib.sha256(b"a" * OVERLAP_MIN + b"b" * OVERLAP_MIN).digest()


async def test_a_push_cancelled_while_it_waits_for_the_lane_leaves_no_block_unhashed() -> None:
    block_size = 1024 * 1024
    blocks = [bytes([65 + n]) * block_size for n in range(8)]
    hasher = _GatedSha256()
    pipeline, written = _recording_pipeline(hasher)

    async def push_all() -> None:
        for block in blocks:
            await pipeline.push(block)

    task = asyncio.create_task(push_all())
    await asyncio.sleep(0.3)
    task.cancel()  # the push waiting for room in the backlog: its block is written already
    with pytest.raises(asyncio.CancelledError):
        await task
    hasher.gate.set()
    await pipeline.settle()
    assert len(written) == LANE_BACKLOG_BYTES // block_size + 2
    assert hasher.sha.digest() == hashlib.sha256(b"".join(written)).digest()
    assert LANE_BACKLOG.held == 0


def test_the_backlog_is_released_even_when_its_event_loop_is_gone() -> None:
    before = LANE_BACKLOG.held
    hasher = _GatedSha256()

    async def write(block: bytes) -> None:
        pass

    async def fill() -> None:
        pipeline = BlockPipeline(write, None, hasher)
        for n in range(3):
            await pipeline.push(bytes([n]) * 1024 * 1024)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(fill())
    assert LANE_BACKLOG.held == before + 2 * 1024 * 1024  # two written blocks wait
    loop.close()
    hasher.gate.set()
    deadline = time.monotonic() + 10
    while LANE_BACKLOG.held != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert LANE_BACKLOG.held == before


def _csv(rows: int) -> bytes:
    lines = ["id,name,amount,when"]
    lines += [f"{n},name {n % 97},{n * 1.25:.2f},2024-01-{n % 28 + 1:02d}" for n in range(rows)]
    return ("\r\n".join(lines) + "\r\n").encode()


async def test_the_lane_gives_the_same_facts_as_one_thread_feeding_every_block(
    tmp_path: Path,
) -> None:
    data = _csv(200_000)  # several MiB: many blocks in the lane, some behind the writes
    assert len(data) > 4 * OVERLAP_MIN * 4
    stored = bytearray()

    async def write(block: bytes) -> None:
        stored.extend(block)

    piped = UploadAnalysis(checkpoint_every=1000)
    pipeline = BlockPipeline(write, piped)
    step = 512 * 1024
    for start in range(0, len(data), step):
        await pipeline.push(data[start : start + step])
    await pipeline.settle()

    fed = UploadAnalysis(checkpoint_every=1000)
    for start in range(0, len(data), step):
        fed.feed(data[start : start + step])

    assert bytes(stored) == data
    facts = piped.finish()
    assert facts == fed.finish()
    assert facts.sha256 == hashlib.sha256(data).hexdigest()
    assert facts.row_count == 200_000
    assert facts.columns == ["id", "name", "amount", "when"]
    assert len(facts.checkpoints) == 200
