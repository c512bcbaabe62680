-- What csvstore learns about each file while it streams in (one pass, no second read).
-- Rows stored before this migration keep NULLs: nothing is guessed after the fact.

ALTER TABLE files ADD COLUMN sha256 TEXT;           -- hex digest of the stored bytes
ALTER TABLE files ADD COLUMN encoding TEXT;         -- Python codec: utf-8, utf-8-sig, utf-16, cp1252
ALTER TABLE files ADD COLUMN delimiter TEXT;
ALTER TABLE files ADD COLUMN quotechar TEXT;
ALTER TABLE files ADD COLUMN line_terminator TEXT;
ALTER TABLE files ADD COLUMN has_header INTEGER;    -- 0 or 1
ALTER TABLE files ADD COLUMN columns TEXT;          -- JSON array of the header's names
ALTER TABLE files ADD COLUMN column_count INTEGER;
ALTER TABLE files ADD COLUMN row_count INTEGER;     -- data rows, the header excluded
ALTER TABLE files ADD COLUMN ragged_rows INTEGER;   -- data rows whose field count differs
ALTER TABLE files ADD COLUMN row_checkpoints TEXT;  -- JSON [[row index, byte offset], ...]

-- dedupe=true looks for the same digest in the same session.
CREATE INDEX files_by_session_digest ON files (session_id, sha256);
