"""SQL and column summaries over a session's CSV files, in DuckDB (issue 20)."""
