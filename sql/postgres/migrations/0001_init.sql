-- The original data model on PostgreSQL: the same tables, columns and indexes as SQLite's
-- 0001_init.sql. Timestamps stay RFC 3339 UTC text with a Z suffix (millisecond
-- precision), so both engines store, sort and return the very same strings.
--
-- COLLATE "C" on every text column that is sorted or used as a cursor: the listing is in
-- session_id order and must page the same on both engines, and SQLite compares bytes.
-- (UTF-8 byte order and code point order agree, so "C" matches SQLite's BINARY.)

CREATE TABLE sessions (
    id          text COLLATE "C" PRIMARY KEY,           -- UUID
    session_id  text COLLATE "C" NOT NULL UNIQUE,       -- chosen by the client; the listing order and cursor
    created_at  text COLLATE "C" NOT NULL,
    updated_at  text COLLATE "C" NOT NULL
);

CREATE TABLE files (
    id                 text COLLATE "C" PRIMARY KEY,    -- UUID; also the stored name, "<id>.csv"
    session_id         text COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    filename           text NOT NULL UNIQUE,            -- stored name under uploads/
    original_filename  text NOT NULL,
    file_size          bigint NOT NULL,
    content_type       text NOT NULL,
    file_path          text NOT NULL,                   -- storage key, relative to the uploads folder
    created_at         text COLLATE "C" NOT NULL
);

-- A session's files in upload order, and the listing's "files of these sessions" join.
CREATE INDEX files_by_session ON files (session_id, created_at, id);

-- updated_at moves whenever a file is added to or removed from its session. Kept in the
-- database so that every writer (handlers, sweepers, migrations) keeps the promise.
-- The update also takes the session row's lock, which is what orders an upload's commit
-- against a concurrent delete of its session (see sql/postgres/files.sql).
CREATE FUNCTION files_added_touch_session() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions SET updated_at = NEW.created_at WHERE id = NEW.session_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER files_added_touch_session AFTER INSERT ON files
FOR EACH ROW EXECUTE FUNCTION files_added_touch_session();

-- The same text as SQLite's strftime('%Y-%m-%dT%H:%M:%fZ', 'now').
CREATE FUNCTION files_removed_touch_session() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions
    SET updated_at = to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
    WHERE id = OLD.session_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER files_removed_touch_session AFTER DELETE ON files
FOR EACH ROW EXECUTE FUNCTION files_removed_touch_session();

-- Deleting a session's files: lock the session row, then delete. Two statements, because
-- under READ COMMITTED each statement reads its own snapshot: the DELETE, run after the
-- lock is granted, sees every file committed before it (an upload holds the same row's
-- lock until it commits, and a later one waits and then finds the session gone). A single
-- statement would read its snapshot before waiting, miss a file committed meanwhile, and
-- the cascade would then remove that row without its stored bytes ever being deleted.
CREATE FUNCTION delete_files_of_session(p_session_id text) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    pk text;
BEGIN
    SELECT id INTO pk FROM sessions WHERE session_id = p_session_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY DELETE FROM files WHERE session_id = pk RETURNING file_path;
END;
$$;
