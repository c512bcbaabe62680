-- How each file's encoding was decided: the same columns as SQLite's 0007_file_encoding.sql.

ALTER TABLE files ADD COLUMN encoding_source text;
ALTER TABLE files ADD COLUMN encoding_confidence double precision;
ALTER TABLE files ADD COLUMN invalid_bytes bigint;
ALTER TABLE files ADD COLUMN first_invalid_offset bigint;
