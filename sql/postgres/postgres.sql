-- Statements only PostgreSQL understands: migration bookkeeping and its lock, the check.

-- name: migration_lock
-- Held while migrations are applied, so instances starting at once apply each exactly
-- once: the others wait, then find it recorded. A session-level advisory lock, released
-- by migration_unlock or by the server when the connection ends.
SELECT pg_advisory_lock(hashtextextended('csvstore schema migrations', 0));

-- name: migration_unlock
SELECT pg_advisory_unlock(hashtextextended('csvstore schema migrations', 0));

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  text NOT NULL
);

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES (:version, :name, :applied_at);

-- name: integrity_check
-- PostgreSQL guards its own pages and enforces the foreign keys; this lists what those
-- would miss if a constraint were dropped or disabled by hand: files without a session.
SELECT 'file ' || f.id || ' belongs to no session' AS problem
FROM files AS f
LEFT JOIN sessions AS s ON s.id = f.session_id
WHERE s.id IS NULL
ORDER BY f.id;
