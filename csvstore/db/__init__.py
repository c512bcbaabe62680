"""Metadata databases (SQLite, PostgreSQL), the named-query loader and the repository."""
