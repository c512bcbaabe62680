-- Each file's API object (its entry in a session's csv_files), rendered when the row is
-- written (inserted: files are never updated, but by this migration's backfill): building
-- some 1,000 of them per listing page was most of the page's time on PostgreSQL
-- (bench/RESULTS.md, issue 19). A later migration that adds a field to the file object
-- replaces this function and renders the column again the same way.
-- SQLite has the same column, generated when read (its 0010).

ALTER TABLE files ADD COLUMN listing_json TEXT;

CREATE FUNCTION files_listing_json() RETURNS trigger LANGUAGE plpgsql AS $$
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
                             'footer_lines', NEW.footer_lines)::text;
    RETURN NEW;
END
$$;

CREATE TRIGGER files_listing_json BEFORE INSERT OR UPDATE ON files
    FOR EACH ROW EXECUTE FUNCTION files_listing_json();

-- The rows already there, through the same function.
UPDATE files SET listing_json = NULL;

ALTER TABLE files ALTER COLUMN listing_json SET NOT NULL;
