-- More of what the single pass learns about a file's dialect (issue 17). Rows stored before
-- keep NULLs: nothing is guessed after the fact.

ALTER TABLE files ADD COLUMN preamble_lines INTEGER;      -- lines before the header
ALTER TABLE files ADD COLUMN skip_initial_space INTEGER;  -- 0 or 1: spaces after a delimiter skipped
ALTER TABLE files ADD COLUMN comment_char TEXT;           -- lines starting with it are not rows
ALTER TABLE files ADD COLUMN duplicate_columns TEXT;      -- JSON array of repeated header names
