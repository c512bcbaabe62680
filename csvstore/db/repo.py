"""Typed operations over the named queries; each takes an :class:`Executor` and returns the
domain objects of csvstore/model.py. Callers run them with ``db.read``/``db.write``."""

from __future__ import annotations

from dataclasses import dataclass, fields

import orjson

from csvstore.analysis.stream import FileFacts
from csvstore.db.queries import Queries
from csvstore.db.sqlite import Executor, Row
from csvstore.model import FileCheck, Intent, JournalEntry, Session, StoredFile
from csvstore.timeutil import utc_now


@dataclass(frozen=True, slots=True)
class NewFile:
    id: str
    session_id: str  # the client's session id
    filename: str
    original_filename: str
    file_size: int
    content_type: str
    file_path: str
    created_at: str
    facts: FileFacts
    # Bytes written without an fsync: committed with the row, their durable copy until synced.
    journal: bytes | None = None


_FILE_FIELDS = [f.name for f in fields(StoredFile) if f.name != "session_pk"]


def _file(row: Row) -> StoredFile:
    if row["columns"] is not None:
        row["columns"] = orjson.loads(row["columns"])
    if row["has_header"] is not None:
        row["has_header"] = bool(row["has_header"])
    for flag in ("skip_initial_space", "header_rule"):
        if row.get(flag) is not None:
            row[flag] = bool(row[flag])
    if row["duplicate_columns"] is not None:
        row["duplicate_columns"] = orjson.loads(row["duplicate_columns"])
    checkpoints = row.get("row_checkpoints")
    if checkpoints is not None:
        row["row_checkpoints"] = orjson.loads(checkpoints)
    return StoredFile(**row)


def _maybe_file(row: Row | None) -> StoredFile | None:
    return None if row is None else _file(row)


def _session(row: Row, files: tuple[StoredFile, ...] | None = None) -> Session:
    return Session(**row, csv_files=files)


def _intent(row: Row) -> Intent:
    return Intent(str(row["storage_key"]), str(row["owner"]), str(row["created_at"]))


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _can_exist(key: str) -> bool:
    """False for a key with a NUL, which PostgreSQL refuses as a parameter (a 500)."""
    return "\x00" not in key


class Repo:
    """The queries the service needs, bound to the loaded SQL; holds no connection."""

    def __init__(self, queries: Queries) -> None:
        self.q = queries

    async def create_session(
        self, x: Executor, *, id: str, session_id: str, created_at: str, expires_at: str | None
    ) -> Session | None:
        """The new session, or None when the session id is already taken."""
        params = {"id": id, "session_id": session_id, "created_at": created_at}
        row = await x.one(self.q.insert_session, {**params, "expires_at": expires_at})
        return None if row is None else _session(row)

    async def expired_sessions(self, x: Executor, *, now: str, limit: int) -> list[str]:
        rows = await x.all(self.q.expired_sessions, {"now": now, "limit": limit})
        return [str(row["session_id"]) for row in rows]

    async def get_session(self, x: Executor, session_id: str) -> Session | None:
        if not _can_exist(session_id):
            return None
        row = await x.one(self.q.get_session, {"session_id": session_id})
        return None if row is None else _session(row)

    async def get_session_with_files(self, x: Executor, session_id: str) -> Session | None:
        if not _can_exist(session_id):
            return None
        row = await x.one(self.q.get_session, {"session_id": session_id})
        if row is None:
            return None
        files = await x.all(self.q.list_files_of_session, {"session_pk": row["id"]})
        return _session(row, tuple(_file(f) for f in files))

    async def list_sessions_with_files(
        self, x: Executor, *, after: str, limit: int
    ) -> list[Session]:
        """One page of sessions with their files, in two queries: the reference the JSON
        listing is tested against. The files are read for the page's range of session ids,
        so a session created between the reads cannot push one out of the page."""
        rows = await x.all(self.q.list_sessions, {"after": after, "limit": limit})
        if not rows:
            return []
        by_pk: dict[str, list[StoredFile]] = {row["id"]: [] for row in rows}
        params = {"after": after, "last": rows[-1]["session_id"]}
        for file in map(_file, await x.all(self.q.list_files_of_session_range, params)):
            owned = by_pk.get(file.session_pk)
            if owned is not None:  # a session created in between is not of this page
                owned.append(file)
        return [_session(row, tuple(by_pk[row["id"]])) for row in rows]

    async def list_sessions_json(
        self, x: Executor, *, after: str, limit: int
    ) -> list[tuple[str, str]]:
        """One page of sessions as (session id, JSON object with its files), from one query
        (one snapshot) in which the engine renders the JSON; here files are only spliced in."""
        heads: dict[str, str] = {}
        files: dict[str, list[str]] = {}
        for row in await x.all(self.q.list_sessions_json, {"after": after, "limit": limit}):
            session_id = row["session_id"]
            if session_id not in heads:
                heads[session_id], files[session_id] = row["json"], []
            if row["file_json"] is not None:
                files[session_id].append(row["file_json"])
        return [
            (session_id, f'{head[:-1]},"csv_files":[{",".join(files[session_id])}]}}')
            for session_id, head in heads.items()
        ]

    async def insert_file(self, x: Executor, new: NewFile) -> StoredFile | None:
        """The stored file, or None when the session was deleted meanwhile."""
        facts = new.facts
        file = _maybe_file(
            await x.one(
                self.q.insert_file,
                {
                    "id": new.id,
                    "session_id": new.session_id,
                    "filename": new.filename,
                    "original_filename": new.original_filename,
                    "file_size": new.file_size,
                    "content_type": new.content_type,
                    "file_path": new.file_path,
                    "created_at": new.created_at,
                    "sha256": facts.sha256,
                    "encoding": facts.encoding,
                    "delimiter": facts.delimiter,
                    "quotechar": facts.quotechar,
                    "line_terminator": facts.line_terminator,
                    "has_header": facts.has_header,
                    "columns": None if facts.columns is None else _json(facts.columns),
                    "column_count": facts.column_count,
                    "row_count": facts.row_count,
                    "ragged_rows": facts.ragged_rows,
                    "row_checkpoints": _json(facts.checkpoints),
                    "encoding_source": facts.encoding_source,
                    "encoding_confidence": facts.encoding_confidence,
                    "invalid_bytes": facts.invalid_bytes,
                    "first_invalid_offset": facts.first_invalid_offset,
                    "preamble_lines": facts.preamble_lines,
                    "skip_initial_space": facts.skip_initial_space,
                    "comment_char": facts.comment_char,
                    "duplicate_columns": None
                    if facts.duplicate_columns is None
                    else _json(facts.duplicate_columns),
                    "footer_lines": facts.footer_lines,
                    "escape_char": facts.escape_char,
                    "header_rule": facts.header_rule,
                },
            )
        )
        if file is not None and new.journal is not None:
            await self.add_journal_entry(x, new.id, new.journal)
        await self.delete_intent(x, new.file_path)
        return file

    async def insert_file_unless_duplicate(
        self, x: Executor, new: NewFile
    ) -> tuple[StoredFile | None, bool]:
        """(the session's earlier file with the same digest, True), else (insert_file, False)."""
        existing = await self.find_duplicate(x, new.session_id, new.facts.sha256)
        if existing is not None:
            await self.delete_intent(x, new.file_path)
            return existing, True
        return await self.insert_file(x, new), False

    async def find_duplicate(
        self, x: Executor, session_id: str, sha256: str | None
    ) -> StoredFile | None:
        if sha256 is None:
            return None
        params = {"session_id": session_id, "sha256": sha256}
        return _maybe_file(await x.one(self.q.find_duplicate, params))

    async def get_file(self, x: Executor, file_id: str) -> StoredFile | None:
        if not _can_exist(file_id):
            return None
        return _maybe_file(await x.one(self.q.get_file, {"id": file_id}))

    async def file_origin(self, x: Executor, file_id: str) -> tuple[int, str, str, str] | None:
        """(size, original name, created at, session id) of a file."""
        row = await x.one(self.q.file_origin, {"id": file_id}) if _can_exist(file_id) else None
        if row is None:
            return None
        return row["file_size"], row["original_filename"], row["created_at"], row["session_id"]

    async def delete_file(
        self, x: Executor, file_id: str, *, intent_owner: str | None = None
    ) -> str | None:
        """Delete a file's row; its storage key, or None when there was no such file.
        ``intent_owner``: record an intent for the key, so that bytes a crash leaves behind
        are known to be this database's leftovers."""
        if not _can_exist(file_id):
            return None
        row = await x.one(self.q.delete_file, {"id": file_id})
        if row is None:
            return None
        if intent_owner is not None:
            await self.add_intent(x, str(row["file_path"]), intent_owner)
        return str(row["file_path"])

    async def delete_session(
        self, x: Executor, session_id: str, *, intent_owner: str | None = None
    ) -> list[str] | None:
        """Delete a session and its file rows; their storage keys, or None if no session."""
        if not _can_exist(session_id):
            return None
        files = await x.all(self.q.delete_files_of_session, {"session_id": session_id})
        deleted = await x.one(self.q.delete_session, {"session_id": session_id})
        if deleted is None:
            return None
        keys = [str(row["file_path"]) for row in files]
        if intent_owner is not None:
            for key in keys:
                await self.add_intent(x, key, intent_owner)
        return keys

    async def get_summary(self, x: Executor, file_id: str) -> tuple[str, str] | None:
        """A file's stored column summary: (its JSON, when it was computed), or None."""
        if not _can_exist(file_id):
            return None
        row = await x.one(self.q.get_summary, {"file_id": file_id})
        return None if row is None else (str(row["summary"]), str(row["created_at"]))

    async def insert_summary(self, x: Executor, file_id: str, summary: str, at: str) -> None:
        """Keep a summary; nothing when the file is gone or one is kept already."""
        params = {"file_id": file_id, "summary": summary, "created_at": at}
        await x.one(self.q.insert_summary, params)

    async def add_journal_entry(self, x: Executor, file_id: str, data: bytes) -> None:
        """The durable copy of a file's bytes, written with its row's insert."""
        await x.all(self.q.insert_journal_entry, {"file_id": file_id, "data": data})

    async def journal_high_water(self, x: Executor) -> int | None:
        row = await x.one(self.q.journal_high_water)
        return None if row is None or row["seq"] is None else int(row["seq"])

    async def clear_journal(self, x: Executor, seq: int) -> None:
        """Forget every entry up to ``seq``: their files are known to be on disk."""
        await x.all(self.q.clear_journal, {"seq": seq})

    async def journal_entries(
        self, x: Executor, *, after: int, up_to: int, limit: int
    ) -> list[JournalEntry]:
        params = {"after": after, "up_to": up_to, "limit": limit}
        return [
            JournalEntry(
                int(row["seq"]), str(row["file_id"]), str(row["file_path"]), bytes(row["data"])
            )
            for row in await x.all(self.q.journal_entries, params)
        ]

    async def delete_journal_entries(self, x: Executor, seqs: list[int]) -> None:
        for seq in seqs:
            await x.all(self.q.delete_journal_entry, {"seq": seq})

    async def add_intent(self, x: Executor, storage_key: str, owner: str) -> None:
        params = {"storage_key": storage_key, "owner": owner, "created_at": utc_now()}
        await x.all(self.q.insert_intent, params)

    async def delete_intent(self, x: Executor, storage_key: str) -> None:
        await x.all(self.q.delete_intent, {"storage_key": storage_key})

    async def delete_intents(self, x: Executor, storage_keys: list[str]) -> None:
        for key in storage_keys:
            await self.delete_intent(x, key)

    async def intents(self, x: Executor) -> list[Intent]:
        return [_intent(row) for row in await x.all(self.q.all_intents)]

    async def names_in_use(self, x: Executor) -> tuple[set[str], list[Intent]]:
        """The stored files' names and the intents, from one snapshot."""
        listed: set[str] = set()
        intents: list[Intent] = []
        for row in await x.all(self.q.names_in_use):
            if row["owner"] is None:
                listed.add(str(row["storage_key"]))
            else:
                intents.append(_intent(row))
        return listed, intents

    # migrate-to: rows copied as they are, in pages by primary key (sql/migrate.sql)

    async def export_sessions(self, x: Executor, *, after: str, limit: int) -> list[Session]:
        rows = await x.all(self.q.export_sessions, {"after": after, "limit": limit})
        return [_session(row) for row in rows]

    async def export_files(self, x: Executor, *, after: str, limit: int) -> list[StoredFile]:
        return [
            _file(row) for row in await x.all(self.q.export_files, {"after": after, "limit": limit})
        ]

    async def import_session(self, x: Executor, session: Session) -> bool:
        """False when a session of that id or client id is there already."""
        params = {
            "id": session.id,
            "session_id": session.session_id,
            "created_at": session.created_at,
            "updated_at": session.updated_at,
            "expires_at": session.expires_at,
        }
        return await x.one(self.q.import_session, params) is not None

    async def session_by_pk(self, x: Executor, pk: str) -> Session | None:
        row = await x.one(self.q.session_by_pk, {"id": pk})
        return None if row is None else _session(row)

    async def file_by_pk(self, x: Executor, file_id: str) -> FileCheck | None:
        row = await x.one(self.q.file_by_pk, {"id": file_id})
        return None if row is None else FileCheck(**row)

    async def import_file(self, x: Executor, file: StoredFile) -> bool:
        """False when a file of that id is there already."""
        params = {name: getattr(file, name) for name in _FILE_FIELDS}
        for name in ("columns", "duplicate_columns", "row_checkpoints"):
            if params[name] is not None:
                params[name] = _json(params[name])
        params["session_id"] = file.session_pk
        return await x.one(self.q.import_file, params) is not None

    async def restore_updated_at(self, x: Executor, pk: str, updated_at: str) -> None:
        await x.all(self.q.restore_updated_at, {"id": pk, "updated_at": updated_at})

    async def ping(self, x: Executor) -> bool:
        return await x.one(self.q.ping) is not None

    async def files_for_check(self, x: Executor) -> list[FileCheck]:
        return [FileCheck(**row) for row in await x.all(self.q.files_for_check)]

    async def all_file_paths(self, x: Executor) -> set[str]:
        return {str(row["file_path"]) for row in await x.all(self.q.all_file_paths)}

    async def get_store_id(self, x: Executor) -> str | None:
        row = await x.one(self.q.get_store_id)
        return None if row is None else str(row["store_id"])

    async def claim_store_id(self, x: Executor, store_id: str, created_at: str) -> None:
        await x.all(self.q.claim_store_id, {"store_id": store_id, "created_at": created_at})
