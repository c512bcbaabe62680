-- Upload intents: the same table as SQLite's 0006_upload_intents.sql (see there, and
-- docs/design/intents.md).
CREATE TABLE upload_intents (
    storage_key  text COLLATE "C" PRIMARY KEY,
    owner        text NOT NULL,
    created_at   text COLLATE "C" NOT NULL
);
