"""Every blob store error carries its retry decision in its class.

    Exception
     └── BlobStoreError
          ├── RetryableBlobError   transient: timeout, 408/429/5xx, connection reset, retry
          │                        deadline spent. The same call may succeed later (nak with delay).
          └── TerminalBlobError    trying the same call again cannot succeed (term, and say why).
               ├── ObjectConflict  another object (different crc32c or size) already holds the key.
               │                   An alarm: two different logs claim one name. Never overwritten.
               ├── ObjectNotFound  no object under the key.
               ├── IntegrityError  bytes do not match their crc32c: corrupted in flight (upload or
               │                   download) or at rest (bit rot, a truncated file).
               └── InvalidKey      the key could escape the store root or is not portable between
                                   drivers (also a ValueError).

Errors are classified where they are raised (`services/blobstore/_gcs_errors.py` holds the one table
for GCS status codes). Anything else escaping a driver is a bug, not an outage.
"""

from __future__ import annotations


class BlobStoreError(Exception):
    """Base of every error a blob store raises on purpose."""

    retryable: bool = False

    def __init__(self, reason: str, *, key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


class RetryableBlobError(BlobStoreError):
    """The store is unavailable or slow right now; the same call may succeed later."""

    retryable = True


class TerminalBlobError(BlobStoreError):
    """The same call cannot succeed: the request, the key or the stored object is wrong."""

    retryable = False


class ObjectConflict(TerminalBlobError):
    """A different object already exists under the key (create-only writes never replace it)."""

    def __init__(
        self,
        key: str,
        *,
        existing_crc32c: str,
        existing_size: int,
        attempted_crc32c: str,
        attempted_size: int,
    ) -> None:
        super().__init__(
            f"{key}: already holds a different object "
            f"(stored crc32c={existing_crc32c} size={existing_size}, "
            f"attempted crc32c={attempted_crc32c} size={attempted_size})",
            key=key,
        )
        self.existing_crc32c = existing_crc32c
        self.existing_size = existing_size
        self.attempted_crc32c = attempted_crc32c
        self.attempted_size = attempted_size


class ObjectNotFound(TerminalBlobError):
    """No object under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: no such object", key=key)


class IntegrityError(TerminalBlobError):
    """Bytes do not match their recorded crc32c (or size)."""


class InvalidKey(TerminalBlobError, ValueError):
    """The key is empty, absolute, has empty/dot segments, or could otherwise escape the root."""
