"""Typed operations over the named queries. Each takes an :class:`Executor`.

Reads are run with ``db.read(...)`` and changes with ``db.write(...)``; the functions
themselves never open connections or transactions.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from csvstore.analysis.stream import FileFacts
from csvstore.db.queries import Queries
from csvstore.db.sqlite import Executor, Row
from csvstore.intents import Intent
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
    # The bytes, when storage wrote them without an fsync: committed with the row into the
    # journal, they are its durable copy until the uploads folder is synced.
    journal: bytes | None = None


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    file_id: str
    file_path: str
    data: bytes


def _file(row: Row | None) -> Row | None:
    """A file row as the service uses it: JSON columns decoded, flags as booleans."""
    if row is None:
        return None
    if row["columns"] is not None:
        row["columns"] = orjson.loads(row["columns"])
    if row["has_header"] is not None:
        row["has_header"] = bool(row["has_header"])
    if row.get("skip_initial_space") is not None:
        row["skip_initial_space"] = bool(row["skip_initial_space"])
    if row.get("duplicate_columns") is not None:
        row["duplicate_columns"] = orjson.loads(row["duplicate_columns"])
    checkpoints = row.get("row_checkpoints")
    if checkpoints is not None:
        row["row_checkpoints"] = orjson.loads(checkpoints)
    return row


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _can_exist(key: str) -> bool:
    """False for a key no row can have: PostgreSQL's text holds no NUL (and refuses one as
    a parameter, a 500), so no id was ever stored with one, on either engine."""
    return "\x00" not in key


def _files(rows: list[Row]) -> list[Row]:
    for row in rows:
        _file(row)
    return rows


class Repo:
    """The queries the service needs, bound to the loaded SQL; holds no connection."""

    def __init__(self, queries: Queries) -> None:
        self.q = queries

    async def create_session(
        self, x: Executor, *, id: str, session_id: str, created_at: str, expires_at: str | None
    ) -> Row | None:
        """The new session, or None when the session id is already taken."""
        return await x.one(
            self.q.insert_session,
            {
                "id": id,
                "session_id": session_id,
                "created_at": created_at,
                "expires_at": expires_at,
            },
        )

    async def expired_sessions(self, x: Executor, *, now: str, limit: int) -> list[str]:
        rows = await x.all(self.q.expired_sessions, {"now": now, "limit": limit})
        return [str(row["session_id"]) for row in rows]

    async def get_session(self, x: Executor, session_id: str) -> Row | None:
        if not _can_exist(session_id):
            return None
        return await x.one(self.q.get_session, {"session_id": session_id})

    async def get_session_with_files(self, x: Executor, session_id: str) -> Row | None:
        session = await self.get_session(x, session_id)
        if session is not None:
            session["csv_files"] = _files(
                await x.all(self.q.list_files_of_session, {"session_pk": session["id"]})
            )
        return session

    async def list_sessions_with_files(self, x: Executor, *, after: str, limit: int) -> list[Row]:
        """One page of sessions, each with its files: two queries whatever the page size.

        The reference the JSON listing is tested against. The files are read for the range
        of session ids the first query returned, so a session created between the two reads
        cannot push one of the page out of the second.
        """
        sessions = await x.all(self.q.list_sessions, {"after": after, "limit": limit})
        if not sessions:
            return sessions
        by_pk: dict[str, Row] = {}
        for session in sessions:
            session["csv_files"] = []
            by_pk[session["id"]] = session
        params = {"after": after, "last": sessions[-1]["session_id"]}
        for file in _files(await x.all(self.q.list_files_of_session_range, params)):
            owner = by_pk.get(file["session_id"])
            if owner is not None:  # a session created in between is not of this page
                owner["csv_files"].append(file)
        return sessions

    async def list_sessions_json(
        self, x: Executor, *, after: str, limit: int
    ) -> list[tuple[str, str]]:
        """One page of sessions as (session id, JSON object with its files), read in one
        query so the page is one snapshot: the engine renders each session and file, here
        the files are only spliced into their sessions' ``csv_files``, in order."""
        heads: dict[str, str] = {}  # in session_id order, as the rows come
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

    async def insert_file(self, x: Executor, new: NewFile) -> Row | None:
        """The stored row, or None when the session was deleted meanwhile."""
        facts = new.facts
        row = _file(
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
                },
            )
        )
        if row is not None and new.journal is not None:
            await self.add_journal_entry(x, new.id, new.journal)
        await self.delete_intent(x, new.file_path)
        return row

    async def insert_file_unless_duplicate(
        self, x: Executor, new: NewFile
    ) -> tuple[Row | None, bool]:
        """(row, is_duplicate): the session's earlier file with the same digest if there is
        one, else the newly inserted row (None when the session is gone)."""
        existing = await self.find_duplicate(x, new.session_id, new.facts.sha256)
        if existing is not None:
            await self.delete_intent(x, new.file_path)
            return existing, True
        return await self.insert_file(x, new), False

    async def find_duplicate(self, x: Executor, session_id: str, sha256: str | None) -> Row | None:
        if sha256 is None:
            return None
        return _file(
            await x.one(self.q.find_duplicate, {"session_id": session_id, "sha256": sha256})
        )

    async def get_file(self, x: Executor, file_id: str) -> Row | None:
        if not _can_exist(file_id):
            return None
        return _file(await x.one(self.q.get_file, {"id": file_id}))

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
        """Delete a session and its file rows; their storage keys, or None if no session.
        ``intent_owner``: as for :meth:`delete_file`."""
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

    # The journal of small uploads' bytes (see storage.py)

    async def add_journal_entry(self, x: Executor, file_id: str, data: bytes) -> None:
        """Keep ``data`` as the durable copy of the file's bytes: run with its row's insert."""
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

    # Upload intents (intents.py)

    async def add_intent(self, x: Executor, storage_key: str, owner: str) -> None:
        params = {"storage_key": storage_key, "owner": owner, "created_at": utc_now()}
        await x.all(self.q.insert_intent, params)

    async def delete_intent(self, x: Executor, storage_key: str) -> None:
        await x.all(self.q.delete_intent, {"storage_key": storage_key})

    async def delete_intents(self, x: Executor, storage_keys: list[str]) -> None:
        for key in storage_keys:
            await self.delete_intent(x, key)

    async def intents(self, x: Executor) -> list[Intent]:
        return [
            Intent(str(row["storage_key"]), str(row["owner"]), str(row["created_at"]))
            for row in await x.all(self.q.all_intents)
        ]

    async def names_in_use(self, x: Executor) -> tuple[set[str], list[Intent]]:
        """The stored files' names and the intents, from one snapshot."""
        listed: set[str] = set()
        intents: list[Intent] = []
        for row in await x.all(self.q.names_in_use):
            if row["owner"] is None:
                listed.add(str(row["storage_key"]))
            else:
                intents.append(
                    Intent(str(row["storage_key"]), str(row["owner"]), str(row["created_at"]))
                )
        return listed, intents

    async def ping(self, x: Executor) -> Row | None:
        return await x.one(self.q.ping)

    async def files_for_check(self, x: Executor) -> list[Row]:
        return await x.all(self.q.files_for_check)

    async def all_file_paths(self, x: Executor) -> set[str]:
        return {str(row["file_path"]) for row in await x.all(self.q.all_file_paths)}

    async def get_store_id(self, x: Executor) -> str | None:
        row = await x.one(self.q.get_store_id)
        return None if row is None else str(row["store_id"])

    async def claim_store_id(self, x: Executor, store_id: str, created_at: str) -> None:
        await x.all(self.q.claim_store_id, {"store_id": store_id, "created_at": created_at})
