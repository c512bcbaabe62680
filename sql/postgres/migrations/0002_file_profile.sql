-- What csvstore learns about each file while it streams in (one pass, no second read).
-- The same columns as SQLite's 0002_file_profile.sql; rows stored before keep NULLs.

ALTER TABLE files ADD COLUMN sha256 text;           -- hex digest of the stored bytes
ALTER TABLE files ADD COLUMN encoding text;         -- Python codec: utf-8, utf-8-sig, utf-16, cp1252
ALTER TABLE files ADD COLUMN delimiter text;
ALTER TABLE files ADD COLUMN quotechar text;
ALTER TABLE files ADD COLUMN line_terminator text;
ALTER TABLE files ADD COLUMN has_header integer;    -- 0 or 1, as on SQLite
ALTER TABLE files ADD COLUMN columns text;          -- JSON array of the header's names
ALTER TABLE files ADD COLUMN column_count integer;
ALTER TABLE files ADD COLUMN row_count bigint;      -- data rows, the header excluded
ALTER TABLE files ADD COLUMN ragged_rows bigint;    -- data rows whose field count differs
ALTER TABLE files ADD COLUMN row_checkpoints text;  -- JSON [[row index, byte offset], ...]

-- dedupe=true looks for the same digest in the same session.
CREATE INDEX files_by_session_digest ON files (session_id, sha256);

-- dedupe=true: the session's earliest file with this digest, read after taking the session
-- row's lock in a statement of its own (see delete_files_of_session in 0001), so that two
-- identical uploads committing at once cannot both miss each other and both be stored.
CREATE FUNCTION find_duplicate(p_session_id text, p_sha256 text) RETURNS SETOF files
LANGUAGE plpgsql AS $$
DECLARE
    pk text;
BEGIN
    SELECT id INTO pk FROM sessions WHERE session_id = p_session_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT * FROM files AS f
        WHERE f.session_id = pk AND f.sha256 = p_sha256
        ORDER BY f.created_at, f.id
        LIMIT 1;
END;
$$;
