-- More of what the single pass learns about a file's dialect (issue 17); the same columns
-- as SQLite's 0008_file_dialect.sql. Rows stored before keep NULLs.

ALTER TABLE files ADD COLUMN preamble_lines integer;      -- lines before the header
ALTER TABLE files ADD COLUMN skip_initial_space integer;  -- 0 or 1, as has_header
ALTER TABLE files ADD COLUMN comment_char text;           -- lines starting with it are not rows
ALTER TABLE files ADD COLUMN duplicate_columns text;      -- JSON array of repeated header names
