-- The write-ahead copy of small uploads' bytes (see csvstore/storage.py, "journal").
--
-- A small upload's file is written into the uploads folder without an fsync of its own;
-- its bytes are committed here, in the same transaction as its row, so the one fsync of
-- the database commit makes the 201 durable. A background task syncs the uploads folder's
-- filesystem and then deletes the entries written before that sync began; after a crash,
-- the start-up check rewrites each entry still here into its file. The table holds about
-- a second's worth of small uploads.
--
-- seq only grows (AUTOINCREMENT: a deleted highest rowid is never reused), so "every
-- entry up to seq N" names a set that later inserts never join.
CREATE TABLE file_journal (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id  TEXT NOT NULL UNIQUE REFERENCES files (id) ON DELETE CASCADE,
    data     BLOB NOT NULL
);
