"""What can go wrong while archiving one log, and what the streamer does about it.

    Exception
     └── ArchiveError
          ├── LogNotReady        the file is still being written, or changed while it was read:
          │                      not uploaded, looked at again shortly. No alarm.
          ├── LogRejected        this file cannot be archived as it is; kept, reported with an
          │    │                 alarm, and examined again only when the file changes.
          │    ├── LogUnreadable the file cannot be read (permissions, I/O error)
          │    └── LogInvalid    not a complete log of this database: truncated, another system
          │                      id, a header that contradicts the name
          └── ChecksumConflict   the object key holds a different log (alarm; never overwritten;
                                 the local copy is kept)

    ForeignArchive               the database's prefix belongs to another database (alarm;
                                 nothing of this database is written until that is resolved);
                                 defined with the ownership rule (services/blobstore/owner.py),
                                 which the engines share

Store failures are the blob store's own errors: `RetryableBlobError` backs off and retries that
one log (never blocking the others); the other `TerminalBlobError`s are retried slowly too, since
a bad request for one log is a bug to report, not a reason to drop a log.
"""

from __future__ import annotations

from schemas.messages import AlarmReason
from services.blobstore.owner import ForeignArchive

__all__ = [
    "ArchiveError",
    "ChecksumConflict",
    "ForeignArchive",
    "LogInvalid",
    "LogNotReady",
    "LogRejected",
    "LogUnreadable",
]


class ArchiveError(Exception):
    """Base of the archiver's own errors."""

    retryable: bool = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LogNotReady(ArchiveError):
    """Still being written, or changed under us: try again soon."""

    retryable = True


class LogRejected(ArchiveError):
    """The file cannot be archived as it stands."""

    alarm: AlarmReason = AlarmReason.INVALID


class LogUnreadable(LogRejected):
    alarm = AlarmReason.UNREADABLE


class LogInvalid(LogRejected):
    alarm = AlarmReason.INVALID


class ChecksumConflict(ArchiveError):
    """The key already holds a log whose checksum differs from ours."""

    def __init__(self, key: str, *, existing_crc32c: str, attempted_crc32c: str) -> None:
        super().__init__(
            f"{key} already holds a different log (stored crc32c {existing_crc32c}, "
            f"this file {attempted_crc32c}); the stored object is kept and so is this file"
        )
        self.key = key
        self.existing_crc32c = existing_crc32c
        self.attempted_crc32c = attempted_crc32c
