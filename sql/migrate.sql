-- python -m csvstore migrate-to: every row copied as it is, ids and timestamps included, in
-- pages ordered by primary key. Re-running copies only what is not there yet.

-- name: export_sessions
SELECT id, session_id, created_at, updated_at, expires_at
FROM sessions
WHERE id > :after
ORDER BY id
LIMIT :limit;

-- name: export_files
SELECT id, session_id AS session_pk, filename, original_filename, file_size, content_type, file_path,
       created_at, sha256, encoding, delimiter, quotechar, line_terminator, has_header,
       columns, column_count, row_count, ragged_rows, row_checkpoints, encoding_source,
       encoding_confidence, invalid_bytes, first_invalid_offset, preamble_lines,
       skip_initial_space, comment_char, duplicate_columns, footer_lines, escape_char, header_rule
FROM files
WHERE id > :after
ORDER BY id
LIMIT :limit;

-- name: import_session^
-- Nothing (no row back) when a session of that id or client id is already there.
INSERT INTO sessions (id, session_id, created_at, updated_at, expires_at)
VALUES (:id, :session_id, :created_at, :updated_at, :expires_at)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: session_by_pk^
SELECT id, session_id, created_at, updated_at, expires_at FROM sessions WHERE id = :id;

-- name: file_by_pk^
SELECT id, file_size, file_path, sha256 FROM files WHERE id = :id;

-- name: import_file^
INSERT INTO files (id, session_id, filename, original_filename, file_size, content_type,
                   file_path, created_at, sha256, encoding, delimiter, quotechar,
                   line_terminator, has_header, columns, column_count, row_count, ragged_rows,
                   row_checkpoints, encoding_source, encoding_confidence, invalid_bytes,
                   first_invalid_offset, preamble_lines, skip_initial_space, comment_char,
                   duplicate_columns, footer_lines, escape_char, header_rule)
VALUES (:id, :session_id, :filename, :original_filename, :file_size, :content_type,
        :file_path, :created_at, :sha256, :encoding, :delimiter, :quotechar,
        :line_terminator, :has_header, :columns, :column_count, :row_count, :ragged_rows,
        :row_checkpoints, :encoding_source, :encoding_confidence, :invalid_bytes,
        :first_invalid_offset, :preamble_lines, :skip_initial_space, :comment_char,
        :duplicate_columns, :footer_lines, :escape_char, :header_rule)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: restore_updated_at
-- The insert trigger moved updated_at to the file's created_at; put back the source's value.
UPDATE sessions SET updated_at = :updated_at WHERE id = :id;
