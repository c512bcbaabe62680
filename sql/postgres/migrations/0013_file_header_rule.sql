-- A rule line under the header (issue 17), as SQLite's 0013: the listing's column is
-- dropped and added again after the new one, its function renders the field, and every
-- row is rendered again.

ALTER TABLE files DROP COLUMN listing_json;

ALTER TABLE files ADD COLUMN header_rule integer;

ALTER TABLE files ADD COLUMN listing_json TEXT;

CREATE OR REPLACE FUNCTION files_listing_json() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.listing_json := json_build_object('id', NEW.id, 'filename', NEW.filename,
                             'original_filename', NEW.original_filename,
                             'file_size', NEW.file_size, 'content_type', NEW.content_type,
                             'created_at', NEW.created_at, 'sha256', NEW.sha256, 'encoding', NEW.encoding,
                             'delimiter', NEW.delimiter, 'quotechar', NEW.quotechar,
                             'line_terminator', NEW.line_terminator,
                             'has_header', CASE NEW.has_header WHEN 1 THEN true WHEN 0 THEN false END,
                             'columns', NEW.columns::json, 'column_count', NEW.column_count,
                             'row_count', NEW.row_count, 'ragged_rows', NEW.ragged_rows,
                             'encoding_source', NEW.encoding_source,
                             'encoding_confidence', NEW.encoding_confidence,
                             'invalid_bytes', NEW.invalid_bytes,
                             'first_invalid_offset', NEW.first_invalid_offset,
                             'preamble_lines', NEW.preamble_lines,
                             'skip_initial_space',
                             CASE NEW.skip_initial_space WHEN 1 THEN true WHEN 0 THEN false END,
                             'comment_char', NEW.comment_char,
                             'duplicate_columns', NEW.duplicate_columns::json,
                             'footer_lines', NEW.footer_lines,
                             'escape_char', NEW.escape_char,
                             'header_rule',
                             CASE NEW.header_rule WHEN 1 THEN true WHEN 0 THEN false END)::text;
    RETURN NEW;
END
$$;

UPDATE files SET listing_json = NULL;

ALTER TABLE files ALTER COLUMN listing_json SET NOT NULL;
