-- Lines after the table (notes, sources) that are not rows (issue 17); the same column as
-- SQLite's 0009_file_footer.sql. Rows stored before keep NULL.

ALTER TABLE files ADD COLUMN footer_lines integer;
