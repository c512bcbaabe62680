-- Lines after the table (notes, sources) that are not rows (issue 17). Rows stored before
-- keep NULL.

ALTER TABLE files ADD COLUMN footer_lines INTEGER;
