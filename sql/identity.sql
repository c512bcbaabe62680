-- The store id (sql/migrations/0005_store_identity.sql, csvstore/identity.py).

-- name: get_store_id^
SELECT store_id FROM store_identity WHERE id = 1;

-- name: claim_store_id
-- Records the id unless one is there already (another instance's, a moment earlier): the
-- caller reads back which one won.
INSERT INTO store_identity (id, store_id, created_at) VALUES (1, :store_id, :created_at)
ON CONFLICT (id) DO NOTHING;
