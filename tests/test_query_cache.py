"""storage/cache.py: the local copies queries read on S3, over the real storage of the suite
(a local folder read as if remote in ``make test``, the S3 bucket in ``make test-s3``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from csvstore.config import Settings
from csvstore.errors import QueryCacheFull
from csvstore.storage.cache import FilePaths
from csvstore.storage.local import Storage
from csvstore.wiring import open_storage


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    async with open_storage(settings) as opened:
        await opened.prepare()
        yield opened


async def _put(storage: Storage, key: str, data: bytes) -> None:
    writer = await storage.begin(key)
    await writer.write(data)
    await writer.commit()


async def _cache(storage: Storage, folder: Path, max_bytes: int) -> FilePaths:
    # root=None: copies, as on S3, whatever the suite's storage is.
    paths = FilePaths(storage, root=None, folder=folder, max_bytes=max_bytes)
    await paths.open()
    return paths


async def test_copies_are_evicted_least_recently_used_first(
    storage: Storage, tmp_path: Path
) -> None:
    for name in "abc":
        await _put(storage, f"{name}.csv", name.encode() * 100)
    cache = await _cache(storage, tmp_path / "cache", max_bytes=250)
    async with cache.paths([("a.csv", 100, None)]) as [a]:
        assert Path(a).read_bytes() == b"a" * 100
        assert Path(a).is_relative_to(tmp_path / "cache")
    async with cache.paths([("b.csv", 100, None)]):
        pass
    async with cache.paths([("a.csv", 100, None)]):  # a is used again: b is now the oldest
        pass
    async with cache.paths([("c.csv", 100, None)]) as [c]:
        assert Path(c).read_bytes() == b"c" * 100
    assert cache.cached() == ["a.csv", "c.csv"]
    assert cache.used_bytes == 200
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.csv")) == ["a.csv", "c.csv"]
    await cache.close()
    assert not any((tmp_path / "cache").rglob("*.csv"))


async def test_a_copy_in_use_is_never_evicted(storage: Storage, tmp_path: Path) -> None:
    for name in "ab":
        await _put(storage, f"{name}.csv", name.encode() * 100)
    cache = await _cache(storage, tmp_path / "cache", max_bytes=150)
    async with cache.paths([("a.csv", 100, None)]) as [a]:
        with pytest.raises(QueryCacheFull) as full:
            async with cache.paths([("b.csv", 100, None)]):
                pass
        assert full.value.status == 503
        assert full.value.retry_after
        assert Path(a).read_bytes() == b"a" * 100  # still there for the running query
    async with cache.paths([("b.csv", 100, None)]) as [b]:  # a is free now: evicted for b
        assert Path(b).read_bytes() == b"b" * 100
    assert cache.cached() == ["b.csv"]
    await cache.close()


async def test_a_file_larger_than_the_cache_is_refused(storage: Storage, tmp_path: Path) -> None:
    await _put(storage, "big.csv", b"x" * 300)
    cache = await _cache(storage, tmp_path / "cache", max_bytes=200)
    with pytest.raises(QueryCacheFull, match="larger than the query cache"):
        async with cache.paths([("big.csv", 300, None)]):
            pass
    assert cache.used_bytes == 0
    assert cache.cached() == []
    await cache.close()


async def test_concurrent_readers_share_one_copy(storage: Storage, tmp_path: Path) -> None:
    await _put(storage, "a.csv", b"a" * 1000)
    reads = 0
    real_read = storage.read

    def counting_read(key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        nonlocal reads
        reads += 1
        return real_read(key, start, length)

    cache = FilePaths(storage, root=None, folder=tmp_path / "cache", max_bytes=10_000)
    cache._storage = type("Counting", (), {"read": staticmethod(counting_read)})()
    await cache.open()

    async def use() -> bytes:
        async with cache.paths([("a.csv", 1000, None)]) as [path]:
            await asyncio.sleep(0.01)
            return Path(path).read_bytes()

    assert await asyncio.gather(*(use() for _ in range(5))) == [b"a" * 1000] * 5
    assert reads == 1
    await cache.close()


async def test_a_deleted_file_leaves_the_cache_when_its_last_query_ends(
    storage: Storage, tmp_path: Path
) -> None:
    for name in "ab":
        await _put(storage, f"{name}.csv", name.encode() * 10)
    cache = await _cache(storage, tmp_path / "cache", max_bytes=1000)
    async with cache.paths([("a.csv", 10, None)]):
        pass
    async with cache.paths([("b.csv", 10, None)]) as [b]:
        cache.forget(["a.csv", "b.csv"])
        assert cache.cached() == []
        assert Path(b).exists()  # the running query still reads it
    assert not Path(b).exists()
    assert cache.used_bytes == 0
    await cache.close()


async def test_copies_of_an_ended_instance_are_removed_those_of_a_live_one_kept(
    storage: Storage, tmp_path: Path
) -> None:
    await _put(storage, "a.csv", b"a" * 10)
    stale = tmp_path / "cache" / "deadbeef"
    stale.mkdir(parents=True)
    (stale / "old.csv").write_bytes(b"left by a crash")
    (tmp_path / "cache" / "deadbeef.lock").touch()  # nobody holds it
    live = await _cache(storage, tmp_path / "cache", max_bytes=1000)
    async with live.paths([("a.csv", 10, None)]) as [kept]:
        pass
    assert not stale.exists()
    other = await _cache(storage, tmp_path / "cache", max_bytes=1000)  # another worker
    async with other.paths([("a.csv", 10, None)]) as [copy]:
        assert copy != kept
    assert Path(kept).read_bytes() == b"a" * 10  # the live one's copies stay
    await other.close()
    await live.close()
    assert list((tmp_path / "cache").iterdir()) == []


async def test_local_storage_gives_the_stored_file_itself(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    cache = FilePaths(None, root=root, folder=tmp_path / "cache", max_bytes=0)  # type: ignore[arg-type]
    async with cache.paths([("a.csv", 10**12, None)]) as [path]:
        assert path == str(root / "a.csv")
    assert not (tmp_path / "cache").exists()


async def test_a_file_duckdb_cannot_decode_is_copied_as_utf8(
    storage: Storage, tmp_path: Path
) -> None:
    text = "name,city\nJosé,São Paulo\n“quoted”,Zürich\n"
    await _put(storage, "w.csv", text.encode("cp1252") + b"\x81\n")  # 0x81: not cp1252
    root = tmp_path / "uploads"  # as on local storage: the original is never read in place
    cache = FilePaths(storage, root=root, folder=tmp_path / "cache", max_bytes=1000)
    await cache.open()
    async with cache.paths([("w.csv", 60, "cp1252")]) as [path]:
        assert Path(path).read_bytes() == (text + "\ufffd\n").encode()
        assert not Path(path).is_relative_to(root)
    assert cache.cached() == ["w.csv.utf-8"]
    assert cache.used_bytes == len((text + "\ufffd\n").encode())  # the copy's own size
    cache.forget(["w.csv"])
    assert cache.cached() == []
    assert cache.used_bytes == 0
    await cache.close()


async def test_a_cache_that_never_copies_makes_no_folder(storage: Storage, tmp_path: Path) -> None:
    cache = FilePaths(storage, root=tmp_path / "uploads", folder=tmp_path / "cache", max_bytes=10)
    await cache.open()
    async with cache.paths([("a.csv", 10**6, None)]):
        pass
    await cache.close()
    assert not (tmp_path / "cache").exists()
