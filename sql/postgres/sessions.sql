-- PostgreSQL version of sql/sessions.sql's JSON listing query (SQLite's json_object is
-- json_build_object here); the same keys, in the same order. Files' objects are stored.

-- name: list_sessions_json
WITH page AS (
    SELECT id, session_id,
           json_build_object('id', id, 'session_id', session_id, 'created_at', created_at,
                             'updated_at', updated_at, 'expires_at', expires_at)::text AS json
    FROM sessions
    WHERE session_id > :after
    ORDER BY session_id
    LIMIT :limit
)
SELECT p.session_id, p.json,
       f.listing_json AS file_json
FROM page AS p
LEFT JOIN files AS f ON f.session_id = p.id
ORDER BY p.session_id, f.created_at, f.id;
