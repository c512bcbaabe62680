-- PostgreSQL version of sql/sessions.sql's JSON listing query (SQLite's json_object is
-- json_build_object here); the same keys, in the same order.

-- name: list_sessions_json
WITH page AS (
    SELECT id, session_id,
           json_build_object('id', id, 'session_id', session_id, 'created_at', created_at,
                             'updated_at', updated_at, 'expires_at', expires_at)::text AS json
    FROM sessions
    WHERE session_id > :after
    ORDER BY session_id
    LIMIT :limit
)
SELECT p.session_id, p.json,
       CASE WHEN f.id IS NOT NULL THEN
       json_build_object('id', f.id, 'filename', f.filename,
                         'original_filename', f.original_filename,
                         'file_size', f.file_size, 'content_type', f.content_type,
                         'created_at', f.created_at, 'sha256', f.sha256, 'encoding', f.encoding,
                         'delimiter', f.delimiter, 'quotechar', f.quotechar,
                         'line_terminator', f.line_terminator,
                         'has_header', CASE f.has_header WHEN 1 THEN true WHEN 0 THEN false END,
                         'columns', f.columns::json, 'column_count', f.column_count,
                         'row_count', f.row_count, 'ragged_rows', f.ragged_rows,
                         'encoding_source', f.encoding_source,
                         'encoding_confidence', f.encoding_confidence,
                         'invalid_bytes', f.invalid_bytes,
                         'first_invalid_offset', f.first_invalid_offset,
                         'preamble_lines', f.preamble_lines,
                         'skip_initial_space',
                         CASE f.skip_initial_space WHEN 1 THEN true WHEN 0 THEN false END,
                         'comment_char', f.comment_char,
                         'duplicate_columns', f.duplicate_columns::json,
                         'footer_lines', f.footer_lines)::text
       END AS file_json
FROM page AS p
LEFT JOIN files AS f ON f.session_id = p.id
ORDER BY p.session_id, f.created_at, f.id;
