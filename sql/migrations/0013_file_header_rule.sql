-- A rule line under the header (`--,----`, as sqlcmd and SQL*Plus write it): 1 when the
-- profile found one (it is not a row), 0 when not, NULL for rows stored before. The
-- listing's JSON gains the field as in 0012.

ALTER TABLE files ADD COLUMN header_rule INTEGER;

ALTER TABLE files DROP COLUMN listing_json;

ALTER TABLE files ADD COLUMN listing_json TEXT GENERATED ALWAYS AS (
    json_object('id', id, 'filename', filename, 'original_filename', original_filename,
                       'file_size', file_size, 'content_type', content_type,
                       'created_at', created_at, 'sha256', sha256, 'encoding', encoding,
                       'delimiter', delimiter, 'quotechar', quotechar,
                       'line_terminator', line_terminator,
                       'has_header', json(CASE has_header WHEN 1 THEN 'true' WHEN 0 THEN 'false' END),
                       'columns', json(columns), 'column_count', column_count,
                       'row_count', row_count, 'ragged_rows', ragged_rows,
                       'encoding_source', encoding_source,
                       'encoding_confidence', encoding_confidence,
                       'invalid_bytes', invalid_bytes,
                       'first_invalid_offset', first_invalid_offset,
                       'preamble_lines', preamble_lines,
                       'skip_initial_space',
                       json(CASE skip_initial_space WHEN 1 THEN 'true' WHEN 0 THEN 'false' END),
                       'comment_char', comment_char,
                       'duplicate_columns', json(duplicate_columns),
                       'footer_lines', footer_lines, 'escape_char', escape_char,
                       'header_rule',
                       json(CASE header_rule WHEN 1 THEN 'true' WHEN 0 THEN 'false' END))
) VIRTUAL;
