"""The typed domain (issue 16): the repo returns frozen dataclasses, the files' foreign key is
``session_pk``, the service is complete when opened, and web/ reaches storage and the
database only through it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from csvstore.config import Settings
from csvstore.maintenance.migrate import migrate
from csvstore.model import Session, StoredFile
from csvstore.web import schemas
from csvstore.web.render import projector
from csvstore.wiring import open_store
from tests.conftest import MakeClient, csv_bytes, upload_form

WEB = Path(__file__).resolve().parent.parent / "csvstore" / "web"


async def _two_files(make_client: MakeClient, settings: Settings | None = None) -> list[str]:
    client = await make_client(settings)
    assert (await client.post("/api/csv/sessions", json={"session_id": "s"})).status == 201
    ids = []
    for data in (csv_bytes(40), b"x;y\n1;2\n"):
        resp = await client.post("/api/csv/upload", data=upload_form(data, session_id="s"))
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["file"]["id"])
    return ids


async def test_the_repo_returns_frozen_dataclasses_keyed_by_session_pk(
    make_client: MakeClient, settings: Settings
) -> None:
    ids = await _two_files(make_client)
    async with open_store(settings) as store:
        session = await store.get_session("s")
        file = await store.get_file(ids[0])
        [listed] = await store.list_sessions(after="", limit=10)
    assert isinstance(session, Session)
    assert isinstance(file, StoredFile)
    assert file.session_pk == session.id != session.session_id
    assert not hasattr(file, "session_id")
    assert file.row_checkpoints  # get_file reads them, for the rows reader
    assert file.has_header is True
    assert file.columns == ["id", "name", "amount"]
    assert listed == session
    assert session.csv_files is not None
    assert [f.id for f in session.csv_files] == ids
    assert all(f.session_pk == session.id for f in session.csv_files)
    with pytest.raises(dataclasses.FrozenInstanceError):
        file.file_size = 0  # type: ignore[misc]


async def test_the_store_is_complete_when_opened(settings: Settings) -> None:
    async with open_store(settings) as store:
        assert store.partials is not None  # built with the store, not patched in later
        for name in ("db", "storage", "repo", "partials"):
            with pytest.raises(AttributeError):
                setattr(store, name, None)


def test_projections_of_the_dataclasses_equal_their_dump() -> None:
    file = StoredFile(
        id="f", session_pk="pk", filename="f.csv", original_filename="a.csv", file_size=3,
        content_type="text/csv", file_path="f.csv", created_at="2026-12-06T10:00:00.000Z",
        sha256="ab" * 32, columns=["a"], has_header=True, row_checkpoints=[[0, 2]],
    )  # fmt: skip
    session = Session("pk", "s", "2026-12-06T10:00:00.000Z", "2026-12-06T10:00:00.000Z", None)
    session = dataclasses.replace(session, csv_files=(file, dataclasses.replace(file, id="g")))
    assert projector(schemas.FileSchema())(file) == schemas.FileSchema().dump(file)
    assert projector(schemas.SessionSchema())(session) == schemas.SessionSchema().dump(session)
    assert "session_pk" not in projector(schemas.FileSchema())(file)


async def test_migrate_to_copies_each_file_row_whole(
    make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    """Every column, checkpoints and dialect included, and the foreign key, as they were."""
    old = Settings(data_dir=tmp_path / "old", max_upload_size=settings.max_upload_size)
    ids = await _two_files(make_client, old)
    report = await migrate(old, settings)
    assert report.files_copied == 2
    async with open_store(old) as src, open_store(settings) as dst:
        for file_id in ids:
            assert await dst.get_file(file_id) == await src.get_file(file_id)
