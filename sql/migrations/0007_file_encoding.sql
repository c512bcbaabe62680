-- How each file's encoding was decided, and what did not fit it (README, "Encodings").
-- Rows stored before this migration keep NULLs: nothing is guessed after the fact.

ALTER TABLE files ADD COLUMN encoding_source TEXT;       -- declared, bom, detected or fallback
ALTER TABLE files ADD COLUMN encoding_confidence REAL;   -- 0-1; NULL for a fallback
ALTER TABLE files ADD COLUMN invalid_bytes INTEGER;      -- bytes not valid in `encoding`
ALTER TABLE files ADD COLUMN first_invalid_offset INTEGER;
