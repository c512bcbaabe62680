-- The original data model: sessions chosen by the client, and the CSV files stored in them.
-- Timestamps are RFC 3339 UTC text with a Z suffix (millisecond precision), so they sort
-- as text and read the same in SQLite and in JSON.

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,             -- UUID
    session_id  TEXT NOT NULL UNIQUE,         -- chosen by the client; the listing order and cursor
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE files (
    id                 TEXT PRIMARY KEY,      -- UUID; also the stored name, "<id>.csv"
    session_id         TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    filename           TEXT NOT NULL UNIQUE,  -- stored name under uploads/
    original_filename  TEXT NOT NULL,
    file_size          INTEGER NOT NULL,
    content_type       TEXT NOT NULL,
    file_path          TEXT NOT NULL,         -- storage key, relative to the uploads folder
    created_at         TEXT NOT NULL
);

-- A session's files in upload order, and the listing's "files of these sessions" join.
CREATE INDEX files_by_session ON files (session_id, created_at, id);

-- updated_at moves whenever a file is added to or removed from its session. Kept in the
-- database so that every writer (handlers, sweepers, migrations) keeps the promise.
CREATE TRIGGER files_added_touch_session AFTER INSERT ON files
BEGIN
    UPDATE sessions SET updated_at = NEW.created_at WHERE id = NEW.session_id;
END;

CREATE TRIGGER files_removed_touch_session AFTER DELETE ON files
BEGIN
    UPDATE sessions SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE id = OLD.session_id;
END;
