"""``python -m csvstore migrate-to``: copy a deployment's rows and stored files to another
database and storage -- typically SQLite and a local folder to PostgreSQL and S3.

Everything is copied as it is: ids, stored names, timestamps, digests and profiles. Each
file's bytes are streamed from the source storage to the target (never held whole), their
size and SHA-256 checked against the row on the way, and only then is the row inserted, so
the target never lists a file it does not hold. The source is only read. Running it again
copies only what is missing, so an interrupted migration is resumed by running it again.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from csvstore.app import open_store
from csvstore.config import Settings, convert
from csvstore.db import Executor, Operation, Row
from csvstore.identity import StoreMismatch
from csvstore.service import CsvStore

log = logging.getLogger("csvstore.migrate")

PAGE = 500


class MigrationError(Exception):
    """The target holds something that contradicts the source; nothing more is copied."""


@dataclass(slots=True)
class MigrationReport:
    sessions_copied: int = 0
    files_copied: int = 0
    bytes_copied: int = 0
    already_there: int = 0  # sessions and files a previous run copied
    bad_files: list[str] = field(default_factory=list)  # source bytes missing or not as recorded

    def summary(self) -> str:
        return (
            f"copied {self.sessions_copied} session(s) and {self.files_copied} file(s) "
            f"({self.bytes_copied} bytes); {self.already_there} already there; "
            f"{len(self.bad_files)} file(s) not copied because their bytes are missing or "
            "differ from their row in the source"
        )


async def migrate(source: Settings, target: Settings, *, page: int = PAGE) -> MigrationReport:
    """Copy every session and file of ``source`` that ``target`` does not have yet."""
    report = MigrationReport()
    # The target gets a store id of its own (a new store: a copy is not the original), the
    # source's is only compared.
    async with open_store(source, claim=False) as src, open_store(target) as dst:
        await dst.storage.prepare()
        updated: dict[str, str] = {}
        after = ""
        while rows := await src.db.read(_page(src, "export_sessions", after, page)):
            for row in rows:
                await _copy_session(dst, row, report)
                updated[row["id"]] = row["updated_at"]
            after = rows[-1]["id"]
        after = ""
        while rows := await src.db.read(_page(src, "export_files", after, page)):
            for row in rows:
                await _copy_file(src, dst, row, report)
            after = rows[-1]["id"]
        # The target's insert trigger moved each session's updated_at; put the source's back.
        for session_pk, updated_at in updated.items():
            await dst.db.write(
                _run(dst, "restore_updated_at", id=session_pk, updated_at=updated_at)
            )
        await dst.flush_journal()  # the copies on disk durable, the journal empty
    return report


def _page(store: CsvStore, query: str, after: str, limit: int) -> Operation[list[Row]]:
    async def op(x: Executor) -> list[Row]:
        return await x.all(getattr(store.db.queries, query), {"after": after, "limit": limit})

    return op


def _one(store: CsvStore, query: str, **params: object) -> Operation[Row | None]:
    async def op(x: Executor) -> Row | None:
        return await x.one(getattr(store.db.queries, query), params)

    return op


def _run(store: CsvStore, query: str, **params: object) -> Operation[list[Row]]:
    async def op(x: Executor) -> list[Row]:
        return await x.all(getattr(store.db.queries, query), params)

    return op


async def _copy_session(dst: CsvStore, row: Row, report: MigrationReport) -> None:
    if await dst.db.write(_one(dst, "import_session", **row)) is not None:
        report.sessions_copied += 1
        return
    there = await dst.db.read(_one(dst, "session_by_pk", id=row["id"]))
    if there is None or there["session_id"] != row["session_id"]:
        raise MigrationError(
            f"the target already has a session {row['session_id']!r} that is not the "
            "source's (another id): migrate into an empty database"
        )
    report.already_there += 1


async def _copy_file(src: CsvStore, dst: CsvStore, row: Row, report: MigrationReport) -> None:
    there = await dst.db.read(_one(dst, "file_by_pk", id=row["id"]))
    if there is not None:
        report.already_there += 1
        return
    key = row["file_path"]
    writer = await dst.storage.begin(key)
    digest = hashlib.sha256()
    try:
        async for chunk in src.storage.read(key):
            digest.update(chunk)
            await writer.write(chunk)
    except FileNotFoundError:
        await writer.abort()
        log.warning("file %s: no bytes at %s in the source; not copied", row["id"], key)
        report.bad_files.append(row["id"])
        return
    except BaseException:
        await writer.abort()
        raise
    if writer.size != row["file_size"] or (row["sha256"] and digest.hexdigest() != row["sha256"]):
        await writer.abort()
        log.warning("file %s: its bytes differ from its row in the source; not copied", row["id"])
        report.bad_files.append(row["id"])
        return
    await writer.commit()
    journal = writer.journal  # a small file on a local disk: kept with its row until synced

    async def insert(x: Executor) -> Row | None:
        inserted = await x.one(dst.db.queries.import_file, row)
        if inserted is not None and journal is not None:
            await dst.repo.add_journal_entry(x, row["id"], journal)
        return inserted

    try:
        inserted = await dst.db.write(insert)
    except BaseException:
        await dst.storage.delete([key])
        raise
    if inserted is None:  # copied meanwhile by another run: keep its bytes, which are these
        report.already_there += 1
        return
    report.files_copied += 1
    report.bytes_copied += writer.size


def build_parser() -> argparse.ArgumentParser:
    from csvstore.__main__ import add_settings_arguments

    parser = argparse.ArgumentParser(
        prog="python -m csvstore migrate-to",
        description=(
            "Copy every session, file row and stored file of a deployment (the source: "
            "--from-data-dir, by default SQLite and the uploads folder there) into the "
            "database and storage named by the usual settings (the target, e.g. "
            "--database-url postgresql://... --storage s3://bucket/prefix). The source is "
            "only read; the target's schema is created. Bytes are checked against each "
            "row's size and SHA-256 on the way. Running it again copies only what is "
            "missing. Stop the source server first. Exit status 0 when everything was "
            "copied, 1 when something could not be."
        ),
    )
    parser.add_argument(
        "--from-data-dir", required=True, type=Path, help="the source deployment's data folder"
    )
    parser.add_argument(
        "--from-database-url",
        default="",
        help="the source database if not FROM_DATA_DIR/csvstore.db: a path, sqlite:///PATH "
        "or postgresql://...",
    )
    parser.add_argument(
        "--from-storage",
        default="",
        help="the source storage if not FROM_DATA_DIR/uploads: a folder or s3://BUCKET/PREFIX",
    )
    add_settings_arguments(parser)
    return parser


def run_migrate(argv: Sequence[str]) -> int:
    from csvstore.__main__ import settings_from

    parser = build_parser()
    args = parser.parse_args(argv)
    target = settings_from(argv, os.environ, parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        source = replace(
            target,
            data_dir=args.from_data_dir,
            database_url=convert("database_url", args.from_database_url),
            storage=convert("storage", args.from_storage),
        )
    except ValueError as exc:
        parser.error(str(exc))
    if source.database_path == target.database_path and not target.uses_postgres:
        parser.error("the source and target databases are the same")
    if source.uses_postgres and source.database_url == target.database_url:
        parser.error("the source and target databases are the same")
    if not source.uses_postgres and not source.database_path.exists():
        parser.error(f"no source database at {source.database_path}")
    try:
        report = asyncio.run(migrate(source, target))
    except (MigrationError, StoreMismatch) as exc:
        print(f"migrate-to: {exc}")
        return 1
    print(report.summary())
    for file_id in report.bad_files:
        print(f"not copied: file {file_id} (see 'python -m csvstore check' on the source)")
    return 1 if report.bad_files else 0
