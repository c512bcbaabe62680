-- A file's column summary (issue 20): computed once by the query engine, then answered from
-- here. Deleted with its file (the cascade), so a summary never outlives the bytes it read.

CREATE TABLE file_summaries (
    file_id     TEXT PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
    summary     TEXT NOT NULL,                -- JSON: the columns' summaries
    created_at  TEXT NOT NULL
);
