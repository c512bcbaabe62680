-- name: insert_file^
-- Record a stored file in the session named by its client id. Inserts nothing (and so
-- returns nothing) when that session no longer exists: a delete won the race.
INSERT INTO files (id, session_id, filename, original_filename, file_size, content_type,
                   file_path, created_at)
SELECT :id, s.id, :filename, :original_filename, :file_size, :content_type,
       :file_path, :created_at
FROM sessions AS s
WHERE s.session_id = :session_id
RETURNING id, session_id, filename, original_filename, file_size, content_type, file_path,
          created_at;

-- name: get_file^
SELECT id, session_id, filename, original_filename, file_size, content_type, file_path,
       created_at
FROM files
WHERE id = :id;

-- name: list_files_of_session
SELECT id, session_id, filename, original_filename, file_size, content_type, file_path,
       created_at
FROM files
WHERE session_id = :session_pk
ORDER BY created_at, id;

-- name: delete_file^
DELETE FROM files
WHERE id = :id
RETURNING file_path;

-- name: all_file_paths
SELECT file_path FROM files;
