-- The database's half of the store id (csvstore/identity.py): recorded at first use, with
-- the same id in a marker beside the stored files, so that a database and a storage that
-- do not belong together are refused before anything is removed. One row at most.
CREATE TABLE store_identity (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    store_id    TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
