-- Every query returning files returns the same columns (row_checkpoints only where the
-- row reader needs them: they can be long). The files.session_id column holds the owning
-- session's primary key; it is returned as session_pk, never to be taken for a client's id.

-- name: insert_file^
-- Record a stored file in the session named by its client id. Inserts nothing (and so
-- returns nothing) when that session no longer exists: a delete won the race.
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
RETURNING id, session_id AS session_pk, filename, original_filename, file_size, content_type, file_path,
          created_at, sha256, encoding, delimiter, quotechar, line_terminator, has_header,
          columns, column_count, row_count, ragged_rows, encoding_source,
          encoding_confidence, invalid_bytes, first_invalid_offset, preamble_lines,
          skip_initial_space, comment_char, duplicate_columns, footer_lines, escape_char, header_rule;

-- name: find_duplicate^
-- The earliest file of a session with the given digest (for dedupe=true).
SELECT f.id, f.session_id AS session_pk, f.filename, f.original_filename, f.file_size, f.content_type,
       f.file_path, f.created_at, f.sha256, f.encoding, f.delimiter, f.quotechar,
       f.line_terminator, f.has_header, f.columns, f.column_count, f.row_count, f.ragged_rows,
       f.encoding_source, f.encoding_confidence, f.invalid_bytes, f.first_invalid_offset,
       f.preamble_lines, f.skip_initial_space, f.comment_char, f.duplicate_columns,
       f.footer_lines, f.escape_char, f.header_rule
FROM files AS f
JOIN sessions AS s ON s.id = f.session_id
WHERE s.session_id = :session_id AND f.sha256 = :sha256
ORDER BY f.created_at, f.id
LIMIT 1;

-- name: get_file^
SELECT f.id, f.session_id AS session_pk, f.filename, f.original_filename, f.file_size, f.content_type,
       f.file_path, f.created_at, f.sha256, f.encoding, f.delimiter, f.quotechar,
       f.line_terminator, f.has_header, f.columns, f.column_count, f.row_count, f.ragged_rows, f.row_checkpoints,
       f.encoding_source, f.encoding_confidence, f.invalid_bytes, f.first_invalid_offset,
       f.preamble_lines, f.skip_initial_space, f.comment_char, f.duplicate_columns,
       f.footer_lines, f.escape_char, f.header_rule
FROM files AS f
WHERE f.id = :id;

-- name: file_origin^
-- A file's size, name, time and its session's client id: a completed tus upload's HEAD.
SELECT f.file_size, f.original_filename, f.created_at, s.session_id
FROM files AS f JOIN sessions AS s ON s.id = f.session_id
WHERE f.id = :id;

-- name: list_files_of_session
SELECT f.id, f.session_id AS session_pk, f.filename, f.original_filename, f.file_size, f.content_type,
       f.file_path, f.created_at, f.sha256, f.encoding, f.delimiter, f.quotechar,
       f.line_terminator, f.has_header, f.columns, f.column_count, f.row_count, f.ragged_rows,
       f.encoding_source, f.encoding_confidence, f.invalid_bytes, f.first_invalid_offset,
       f.preamble_lines, f.skip_initial_space, f.comment_char, f.duplicate_columns,
       f.footer_lines, f.escape_char, f.header_rule
FROM files AS f
WHERE f.session_id = :session_pk
ORDER BY f.created_at, f.id;

-- name: delete_file^
DELETE FROM files
WHERE id = :id
RETURNING file_path;

-- name: all_file_paths
SELECT file_path FROM files;

-- name: files_for_check
-- What the consistency check compares with the bytes in storage.
SELECT id, file_path, file_size, sha256 FROM files ORDER BY id;

-- The journal of small uploads' bytes (sql/migrations/0004_file_journal.sql).

-- name: insert_journal_entry
-- Committed with the file's row: the durable copy of bytes written without an fsync.
INSERT INTO file_journal (file_id, data) VALUES (:file_id, :data);

-- name: journal_high_water^
-- The newest entry: once the uploads folder has been synced after this was read, every
-- entry up to it is on disk in its file.
SELECT max(seq) AS seq FROM file_journal;

-- name: clear_journal
DELETE FROM file_journal WHERE seq <= :seq;

-- name: journal_entries
-- Entries to write back into their files (start-up check, failed sync), a page at a time.
SELECT j.seq, j.file_id, f.file_path, j.data
FROM file_journal AS j
JOIN files AS f ON f.id = j.file_id
WHERE j.seq > :after AND j.seq <= :up_to
ORDER BY j.seq
LIMIT :limit;

-- name: delete_journal_entry
DELETE FROM file_journal WHERE seq = :seq;

-- Column summaries (sql/migrations/0011_file_summary.sql).

-- name: get_summary^
SELECT summary, created_at FROM file_summaries WHERE file_id = :file_id;

-- name: insert_summary^
-- Kept only while its file exists; a summary computed twice at once keeps the first.
INSERT INTO file_summaries (file_id, summary, created_at)
SELECT :file_id, :summary, :created_at
WHERE EXISTS (SELECT 1 FROM files WHERE id = :file_id)
ON CONFLICT (file_id) DO NOTHING
RETURNING file_id;
