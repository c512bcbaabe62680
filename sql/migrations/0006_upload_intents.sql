-- Upload intents: a stored name that is about to be published (docs/design/intents.md).
--
-- A row is written, and committed, before the bytes appear under their final name in
-- storage; it is deleted in the same transaction that commits the file's row, or after the
-- bytes were removed again. Reconcile never deletes stored bytes whose name has a live
-- intent, so it cannot race an upload between its publish and its commit.
--
-- owner names the process: "<host> <pid> <process start time>", which a check on the same
-- host can test for life; from another host an intent is live until it is INTENT_TIMEOUT
-- old (the window it covers lasts as long as one publish and one commit).
CREATE TABLE upload_intents (
    storage_key  TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
