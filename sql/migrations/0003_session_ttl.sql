-- Retention: a session may expire. NULL (the default) means it never does.
ALTER TABLE sessions ADD COLUMN expires_at TEXT;

-- The sweeper's question, "which sessions have expired?", without a full scan.
CREATE INDEX sessions_by_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;
