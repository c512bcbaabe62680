-- name: insert_session^
-- Create a session; returns nothing when the session id is taken.
INSERT INTO sessions (id, session_id, created_at, updated_at, expires_at)
VALUES (:id, :session_id, :created_at, :created_at, :expires_at)
ON CONFLICT (session_id) DO NOTHING
RETURNING id, session_id, created_at, updated_at, expires_at;

-- name: get_session^
SELECT id, session_id, created_at, updated_at, expires_at
FROM sessions
WHERE session_id = :session_id;

-- name: list_sessions
-- One page of sessions in session_id order, starting after the cursor.
SELECT id, session_id, created_at, updated_at, expires_at
FROM sessions
WHERE session_id > :after
ORDER BY session_id
LIMIT :limit;

-- name: list_files_of_session_range
-- The files of the sessions with ids in (after, last]: those of a page list_sessions
-- returned, in one query for the whole page, never one per session.
SELECT f.id, f.session_id AS session_pk, f.filename, f.original_filename, f.file_size, f.content_type,
       f.file_path, f.created_at, f.sha256, f.encoding, f.delimiter, f.quotechar,
       f.line_terminator, f.has_header, f.columns, f.column_count, f.row_count, f.ragged_rows,
       f.encoding_source, f.encoding_confidence, f.invalid_bytes, f.first_invalid_offset,
       f.preamble_lines, f.skip_initial_space, f.comment_char, f.duplicate_columns,
       f.footer_lines, f.escape_char, f.header_rule
FROM files AS f
WHERE f.session_id IN (
    SELECT id FROM sessions WHERE session_id > :after AND session_id <= :last
)
ORDER BY f.session_id, f.created_at, f.id;

-- name: delete_files_of_session
-- First half of deleting a session: its file rows, returning where their bytes are.
DELETE FROM files
WHERE session_id = (SELECT id FROM sessions WHERE session_id = :session_id)
RETURNING file_path;

-- name: delete_session^
DELETE FROM sessions
WHERE session_id = :session_id
RETURNING id;

-- name: ping^
-- The readiness probe: the database answers a query.
SELECT 1 AS ok;

-- name: expired_sessions
-- Sessions whose time is up, oldest expiry first, a batch at a time.
SELECT session_id
FROM sessions
WHERE expires_at IS NOT NULL AND expires_at <= :now
ORDER BY expires_at
LIMIT :limit;

-- name: list_sessions_json
-- The listing's hot path: one page of sessions in session_id order after the cursor, each
-- already rendered as the API's JSON object, joined to its files (one row per file, or one
-- row with file_json NULL), each file as the API's file object, in the session's order.
-- One statement, so one snapshot: two queries could see different pages when a session is
-- created between them. The engine builds the JSON, so a page of 100 sessions costs no
-- per-row work in Python; the tests check it against the marshmallow schemas' dump.
WITH page AS (
    SELECT id, session_id,
           json_object('id', id, 'session_id', session_id, 'created_at', created_at,
                       'updated_at', updated_at, 'expires_at', expires_at) AS json
    FROM sessions
    WHERE session_id > :after
    ORDER BY session_id
    LIMIT :limit
)
SELECT p.session_id, p.json,
       f.listing_json AS file_json
FROM page AS p
LEFT JOIN files AS f ON f.session_id = p.id
ORDER BY p.session_id, f.created_at, f.id;
