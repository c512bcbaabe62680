-- A file's column summary (issue 20); the same table as SQLite's 0011_file_summary.sql,
-- deleted with its file by the cascade.

CREATE TABLE file_summaries (
    file_id     text COLLATE "C" PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
    summary     text NOT NULL,
    created_at  text COLLATE "C" NOT NULL
);
