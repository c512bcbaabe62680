-- PostgreSQL versions of sql/sessions.sql's JSON listing queries (SQLite's json_object
-- is json_build_object here); the same keys, in the same order.

-- name: list_sessions_json
SELECT id, session_id,
       json_build_object('id', id, 'session_id', session_id, 'created_at', created_at,
                         'updated_at', updated_at, 'expires_at', expires_at)::text AS json
FROM sessions
WHERE session_id > :after
ORDER BY session_id
LIMIT :limit;

-- name: list_files_of_session_page_json
SELECT f.session_id AS session_pk,
       json_build_object('id', f.id, 'filename', f.filename,
                         'original_filename', f.original_filename,
                         'file_size', f.file_size, 'content_type', f.content_type,
                         'created_at', f.created_at, 'sha256', f.sha256, 'encoding', f.encoding,
                         'delimiter', f.delimiter, 'quotechar', f.quotechar,
                         'line_terminator', f.line_terminator,
                         'has_header', CASE f.has_header WHEN 1 THEN true WHEN 0 THEN false END,
                         'columns', f.columns::json, 'column_count', f.column_count,
                         'row_count', f.row_count, 'ragged_rows', f.ragged_rows)::text AS json
FROM files AS f
WHERE f.session_id IN (
    SELECT id FROM sessions WHERE session_id > :after ORDER BY session_id LIMIT :limit
)
ORDER BY f.session_id, f.created_at, f.id;
