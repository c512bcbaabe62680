"""The partial-upload store on its own: crash states, reconciling, the cross-process lock."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from csvstore.errors import UploadLocked
from csvstore.resumable.local import LocalPartialStore, PartialState


def state(upload_id: str, **changes: object) -> PartialState:
    base = PartialState(
        id=upload_id,
        length=10,
        offset=4,
        session_id="s1",
        filename="a.csv",
        metadata="",
        options={},
        created_at="2026-01-01T00:00:00.000Z",
        expires_at=time.time() + 3600,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> LocalPartialStore:
    (tmp_path / "uploads").mkdir()
    return LocalPartialStore(tmp_path / "tus", tmp_path / "uploads", fsync=False)


async def put(store: LocalPartialStore, st: PartialState, data: bytes | None) -> None:
    await store.create(st)
    path = store.data_path(st.id)
    if data is None:
        path.unlink()
    else:
        path.write_bytes(data)


async def test_reconcile_keeps_resumable_uploads_and_settles_the_rest(
    store: LocalPartialStore,
) -> None:
    ids = {name: ch * 32 for name, ch in zip("abcdefg", "abcdef0", strict=True)}
    await put(store, state(ids["a"]), b"a,b\n9,9")  # resumable; 3 unacknowledged bytes
    await put(store, state(ids["b"], file_id="f-published"), None)  # published, unrecorded
    await put(store, state(ids["c"], file_id="f-lost"), None)  # renamed, row never made
    await put(store, state(ids["d"]), b"a,")  # acknowledged bytes missing
    await put(store, state(ids["e"], expires_at=time.time() - 1), b"a,b\n")  # expired
    await put(store, state(ids["f"]), None)  # a state without its data
    store.data_path(ids["g"]).write_bytes(b"x")  # data without a state
    store.state_path(ids["a"]).with_suffix(".json.new").write_bytes(b"{")  # a torn write

    removed = await store.reconcile(published={"f-published"})

    assert removed == 6
    assert sorted(p.name for p in store.directory.iterdir()) == sorted(
        [f"{ids['a']}.json", f"{ids['a']}.part", f"{ids['b']}.json"]
    )
    done = await store.get(ids["b"])
    assert done is not None
    assert (done.completed, done.offset) == (True, done.length)
    async with store.hold(ids["a"]) as hold:
        assert hold is not None
        assert hold.state.offset == 4
    assert store.data_path(ids["a"]).read_bytes() == b"a,b\n"  # cut back to the offset
    assert await store.reconcile(published=set()) == 0  # idempotent


async def test_young_uploads_are_spared_by_a_check_on_a_live_server(
    store: LocalPartialStore,
) -> None:
    upload_id = "1" * 32
    await put(store, state(upload_id), None)  # looks lost, but it was written just now
    assert await store.reconcile(published=set(), min_age=3600) == 0
    assert await store.get(upload_id) is not None


async def test_an_upload_held_by_one_process_is_locked_for_another(
    store: LocalPartialStore,
) -> None:
    upload_id = "2" * 32
    await put(store, state(upload_id), b"a,b\n")
    other_process = f"""
import asyncio, sys
from pathlib import Path
from csvstore.errors import UploadLocked
from csvstore.resumable.local import LocalPartialStore
store = LocalPartialStore(Path({str(store.directory)!r}), Path(), fsync=False)
async def main():
    try:
        async with store.hold({upload_id!r}):
            sys.exit(0)
    except UploadLocked:
        sys.exit(42)
asyncio.run(main())
"""
    async with store.hold(upload_id) as hold:
        assert hold is not None
        with pytest.raises(UploadLocked):  # a second request in this process
            async with store.hold(upload_id):
                pass
        assert subprocess.run([sys.executable, "-c", other_process]).returncode == 42
        with pytest.raises(UploadLocked):  # and termination waits for the writer too
            await store.remove(upload_id)
        assert await store.reconcile(published=set()) == 0  # a held upload is in use
    assert subprocess.run([sys.executable, "-c", other_process]).returncode == 0
    assert await store.remove(upload_id)
    assert list(store.directory.iterdir()) == []


async def test_sweeping_spares_uploads_in_use_and_unexpired_ones(
    store: LocalPartialStore,
) -> None:
    expired, in_use, fresh = "3" * 32, "4" * 32, "5" * 32
    past = time.time() - 1
    await put(store, state(expired, expires_at=past), b"a")
    await put(store, state(in_use, expires_at=past), b"a")
    await put(store, state(fresh), b"a")
    async with store.hold(in_use):
        assert await store.sweep_expired(time.time()) == 1
    assert await store.get(expired) is None
    assert await store.get(in_use) is not None
    assert await store.get(fresh) is not None
    assert await store.sweep_expired(time.time()) == 1  # its writer is gone: now it goes
