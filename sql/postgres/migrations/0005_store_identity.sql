-- The database's half of the store id: the same table as SQLite's
-- 0005_store_identity.sql (see there, and csvstore/identity.py). One row at most.
CREATE TABLE store_identity (
    id          integer PRIMARY KEY CHECK (id = 1),
    store_id    text NOT NULL,
    created_at  text NOT NULL
);
