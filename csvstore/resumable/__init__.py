"""Resumable (tus) uploads in progress, on local disk or S3, without HTTP."""
