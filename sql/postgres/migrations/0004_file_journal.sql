-- The write-ahead copy of small uploads' bytes: the same table as SQLite's
-- 0004_file_journal.sql (see there, and csvstore/storage.py, "journal").
-- seq comes from a sequence, which never hands out a value twice.
CREATE TABLE file_journal (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_id  text COLLATE "C" NOT NULL UNIQUE REFERENCES files (id) ON DELETE CASCADE,
    data     bytea NOT NULL
);
