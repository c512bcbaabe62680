-- PostgreSQL's versions of the file queries whose shared text (sql/files.sql) would be
-- correct only with SQLite's one writer at a time. Here writers run concurrently, in
-- separate instances too, so every change to a session's files first takes the session
-- row's lock -- the lock the updated_at trigger takes anyway -- and a delete of the
-- session, which takes it FOR UPDATE, is ordered against them (0001_init.sql).

-- name: insert_file^
-- As the shared query, and FOR NO KEY UPDATE: an upload whose session is being deleted
-- waits for that delete, then finds no session and inserts nothing (the caller's 404),
-- instead of failing the foreign key check.
INSERT INTO files (id, session_id, filename, original_filename, file_size, content_type,
                   file_path, created_at, sha256, encoding, delimiter, quotechar,
                   line_terminator, has_header, columns, column_count, row_count, ragged_rows,
                   row_checkpoints, encoding_source, encoding_confidence, invalid_bytes,
                   first_invalid_offset, preamble_lines, skip_initial_space, comment_char,
                   duplicate_columns, footer_lines, escape_char, header_rule)
SELECT :id, s.id, :filename, :original_filename, :file_size, :content_type,
       :file_path, :created_at, :sha256, :encoding, :delimiter, :quotechar,
       :line_terminator, :has_header, :columns, :column_count, :row_count, :ragged_rows,
       :row_checkpoints, :encoding_source, :encoding_confidence, :invalid_bytes,
       :first_invalid_offset, :preamble_lines, :skip_initial_space, :comment_char,
       :duplicate_columns, :footer_lines, :escape_char, :header_rule
FROM sessions AS s
WHERE s.session_id = :session_id
FOR NO KEY UPDATE OF s
RETURNING id, session_id AS session_pk, filename, original_filename, file_size, content_type, file_path,
          created_at, sha256, encoding, delimiter, quotechar, line_terminator, has_header,
          columns, column_count, row_count, ragged_rows, encoding_source,
          encoding_confidence, invalid_bytes, first_invalid_offset, preamble_lines,
          skip_initial_space, comment_char, duplicate_columns, footer_lines, escape_char, header_rule;

-- name: find_duplicate^
-- The earliest file of a session with the given digest, read under the session's lock.
SELECT f.id, f.session_id AS session_pk, f.filename, f.original_filename, f.file_size, f.content_type,
       f.file_path, f.created_at, f.sha256, f.encoding, f.delimiter, f.quotechar,
       f.line_terminator, f.has_header, f.columns, f.column_count, f.row_count, f.ragged_rows,
       f.encoding_source, f.encoding_confidence, f.invalid_bytes, f.first_invalid_offset,
       f.preamble_lines, f.skip_initial_space, f.comment_char, f.duplicate_columns,
       f.footer_lines, f.escape_char, f.header_rule
FROM find_duplicate(:session_id, :sha256) AS f;

-- name: delete_file^
-- The session row is locked before the file row, the order a session delete takes them
-- in, so the two never deadlock.
WITH owner AS (
    SELECT s.id
    FROM sessions AS s
    JOIN files AS f ON f.session_id = s.id
    WHERE f.id = :id
    FOR NO KEY UPDATE OF s
)
DELETE FROM files
WHERE id = :id AND session_id IN (SELECT id FROM owner)
RETURNING file_path;

-- name: delete_files_of_session
-- First half of deleting a session: lock it, then delete its file rows, returning where
-- their bytes are (see the function in 0001_init.sql for why it takes two statements).
SELECT file_path FROM delete_files_of_session(:session_id) AS file_path;
