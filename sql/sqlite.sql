-- Statements only SQLite understands: connection set-up, transactions, bookkeeping.

-- name: begin_immediate
-- Take the write lock at the start, so a batch never fails half-way on SQLITE_BUSY.
BEGIN IMMEDIATE;

-- name: pragma_wal
-- Readers never wait for the writer, and the writer never waits for readers.
PRAGMA journal_mode = WAL;

-- name: pragma_foreign_keys
PRAGMA foreign_keys = ON;

-- name: pragma_busy_timeout
-- Another process (a second worker, the check command) holding the lock is waited for.
PRAGMA busy_timeout = 10000;

-- name: pragma_synchronous_full
-- Each commit is fsynced before it returns: a 201 survives a crash or a power cut.
PRAGMA synchronous = FULL;

-- name: pragma_synchronous_normal
-- The WAL is fsynced only at checkpoints: survives a process crash, not a power cut.
PRAGMA synchronous = NORMAL;

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL
);

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES (:version, :name, :applied_at);

-- name: integrity_check
PRAGMA integrity_check;
