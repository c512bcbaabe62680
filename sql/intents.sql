-- Upload intents (sql/migrations/0006_upload_intents.sql): names about to be published.

-- name: insert_intent
-- A retry of the same name (migrate-to resuming a copy) takes the intent over.
INSERT INTO upload_intents (storage_key, owner, created_at)
VALUES (:storage_key, :owner, :created_at)
ON CONFLICT (storage_key) DO UPDATE SET owner = excluded.owner, created_at = excluded.created_at;

-- name: delete_intent
DELETE FROM upload_intents WHERE storage_key = :storage_key;

-- name: all_intents
SELECT storage_key, owner, created_at FROM upload_intents ORDER BY storage_key;

-- name: names_in_use
-- One statement, so one snapshot: every stored file's name (owner NULL) and every intent.
-- Read after listing the storage: a name listed there is then either here or an orphan.
SELECT file_path AS storage_key, NULL AS owner, NULL AS created_at FROM files
UNION ALL
SELECT storage_key, owner, created_at FROM upload_intents;
