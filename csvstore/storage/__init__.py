"""Where the bytes of stored files live: a local folder or an S3 bucket."""
