"""Named crash points for the crash-safety tests: ``CSVSTORE_CRASH_AT=<name>[@<n>]`` SIGKILLs
the process there, ``CSVSTORE_PAUSE_AT=<name>:<seconds>`` pauses it (docs/testing.md)."""

from __future__ import annotations

import os
import signal
import time

POINTS = (
    "publish.intent_committed",  # the intent is recorded, the bytes are not yet published
    "publish.bytes_published",  # the bytes are under their final name, the row is not in
    "publish.row_committed",  # the row is in, the client not yet answered
    "storage.file_synced",  # the temp file is fsynced, not yet renamed
    "storage.renamed",  # renamed into uploads/, the folder not yet fsynced
    "storage.journal_written",  # a small file written in place, without an fsync
    "tus.appended",  # a block is written to a local tus data file, its append not yet returned
    "tus.checkpoint_synced",  # the bytes of a PATCH are fsynced, the offset not yet saved
    "tus.publishing_saved",  # the state names the file id it is about to be published as
    "tus.linked",  # the data file is linked into uploads/, the folder not yet fsynced
    "tus.row_committed",  # the row is in, the upload's state does not say complete yet
    "tus.finished",  # the state says complete, the data file is not yet removed
    "tus.whole_published",  # a creation with its whole file: the row is in, no state yet
    "delete.row_removed",  # a file's or a session's rows are gone, their bytes not yet
    "flush.synced",  # the uploads folder is synced, its journal entries not yet cleared
    "restore.file_written",  # a journaled file is written back, its entry not yet dropped
    "migrate.bytes_copied",  # a file's bytes are in the target under an intent, its row not yet
    "check.orphan_removed",  # the first orphan is deleted, the rest not yet
    "check.intent_cleared",  # a dead intent's bytes are deleted, its row not yet
)
# Passed on S3 storage only (resumable/s3.py): tests/test_crash_points_s3.py.
S3_POINTS = (
    "tus.s3_upload_started",  # a tus upload's multipart upload is started, its record not naming it
    "tus.s3_object_completed",  # the object is made (completed, or one PUT), the record not told
    "tus.s3_tails_dropped",  # a completed upload's tail segments are deleted, its record not marked
)

_ARMED = os.environ.get("CSVSTORE_CRASH_AT", "")
_NAME, _, _NTH = _ARMED.partition("@")
_PAUSE_NAME, _, _PAUSE_S = os.environ.get("CSVSTORE_PAUSE_AT", "").partition(":")
_passages: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process here if the tests armed this point."""
    if name == _PAUSE_NAME:
        time.sleep(float(_PAUSE_S))  # blocking on purpose: the whole process stops
    if name != _NAME:
        return
    _passages[name] = _passages.get(name, 0) + 1
    if _passages[name] >= int(_NTH or 1):
        os.kill(os.getpid(), signal.SIGKILL)
