"""The domain objects the repo returns (csvstore/db/repo.py): frozen, typed, never dicts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    # The owning session's primary key (Session.id), not the client's session_id.
    session_pk: str
    filename: str
    original_filename: str
    file_size: int
    content_type: str
    file_path: str  # the storage key
    created_at: str
    sha256: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    quotechar: str | None = None
    line_terminator: str | None = None
    has_header: bool | None = None
    columns: list[str] | None = None
    column_count: int | None = None
    row_count: int | None = None
    ragged_rows: int | None = None
    encoding_source: str | None = None
    encoding_confidence: float | None = None
    invalid_bytes: int | None = None
    first_invalid_offset: int | None = None
    preamble_lines: int | None = None
    skip_initial_space: bool | None = None
    comment_char: str | None = None
    duplicate_columns: list[str] | None = None
    footer_lines: int | None = None
    escape_char: str | None = None
    header_rule: bool | None = None
    # [data row, byte offset] pairs, long: read by get_file only, for the rows reader.
    row_checkpoints: list[list[int]] | None = None


@dataclass(frozen=True, slots=True)
class Session:
    id: str  # StoredFile.session_pk
    session_id: str
    created_at: str
    updated_at: str
    expires_at: str | None = None
    csv_files: tuple[StoredFile, ...] | None = None  # None: not read


@dataclass(frozen=True, slots=True)
class FileCheck:
    id: str
    file_path: str
    file_size: int
    sha256: str | None


@dataclass(frozen=True, slots=True)
class Intent:
    storage_key: str
    owner: str
    created_at: str


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    file_id: str
    file_path: str
    data: bytes
