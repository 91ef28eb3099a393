"""The one table that turns what google-cloud-storage raises into a retry decision.

Retried in place (exponential backoff with full jitter, bounded by a deadline) and, once the
deadline is spent, raised as `RetryableBlobError`: HTTP 408, 429, 500, 502, 503, 504, transport
failures (connection reset or refused, timeouts, truncated bodies) and errors on a 2xx answer
(one garbled in transit). Everything else is terminal:
404 → `ObjectNotFound`, a checksum rejection → `IntegrityError`, other 4xx → `TerminalBlobError`.
HTTP 412 (a failed generation precondition) is not an error here: the create-only write settles it.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass

import requests
import urllib3
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.cloud.storage import exceptions as storage_exceptions

from services.blobstore.errors import (
    BlobStoreError,
    IntegrityError,
    ObjectNotFound,
    RetryableBlobError,
    TerminalBlobError,
)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
PRECONDITION_FAILED = 412

_TRANSPORT_FAILURES: tuple[type[BaseException], ...] = (
    ConnectionError,  # includes ConnectionResetError / ConnectionRefusedError
    TimeoutError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    http.client.IncompleteRead,
    http.client.BadStatusLine,
    http.client.ResponseNotReady,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.PoolError,
)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Backoff for one GCS call: sleeps are uniform in [0, d] with d = initial·multiplier^n capped
    at `maximum`; the call gives up (raising `RetryableBlobError`) once `deadline` seconds pass."""

    initial: float = 1.0
    maximum: float = 32.0
    multiplier: float = 2.0
    deadline: float = 300.0

    def policy(self) -> Retry:
        return Retry(
            predicate=is_retryable,
            initial=self.initial,
            maximum=self.maximum,
            multiplier=self.multiplier,
            timeout=self.deadline,
        )


def status_of(exc: BaseException) -> int | None:
    """The HTTP status behind a google error, whichever layer raised it."""
    if isinstance(exc, api_exceptions.GoogleAPICallError) and exc.code is not None:
        return int(exc.code)
    if isinstance(exc, storage_exceptions.InvalidResponse):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return int(status) if status is not None else None
    return None


def is_retryable(exc: BaseException) -> bool:
    """The retry predicate: true only for failures that another attempt may not repeat."""
    if isinstance(exc, _TRANSPORT_FAILURES):
        return True
    if isinstance(exc, auth_exceptions.TransportError):
        return True
    status = status_of(exc)
    if status is not None and 200 <= status < 300:
        # An error on a success status is an answer garbled in transit (a head cut off before
        # its Location header, a body cut short): like a truncated body, another attempt gets
        # a whole one. Terminal, it failed a resumable upload whose session never started.
        return True
    return status is not None and status in RETRYABLE_STATUS


def is_precondition_failure(exc: BaseException) -> bool:
    return status_of(exc) == PRECONDITION_FAILED


def is_checksum_rejection(exc: BaseException) -> bool:
    """GCS (and the emulator) answer 400 "Provided CRC32C … doesn't match calculated CRC32C"."""
    return status_of(exc) == 400 and "crc32c" in str(exc).lower()


def classify(exc: BaseException, key: str | None) -> BlobStoreError | None:
    """The blob store error for `exc`, or None when `exc` is not a storage failure (a bug)."""
    if isinstance(exc, BlobStoreError):
        return exc
    label = key or "(bucket)"
    if isinstance(exc, storage_exceptions.DataCorruption):
        return IntegrityError(f"{label}: {exc}", key=key)
    if isinstance(exc, api_exceptions.RetryError):
        cause = exc.cause if exc.cause is not None else exc
        return RetryableBlobError(f"{label}: gave up after retrying: {cause}", key=key)
    if is_retryable(exc):
        return RetryableBlobError(f"{label}: {type(exc).__name__}: {exc}", key=key)
    status = status_of(exc)
    if status == 404 and key is not None:
        return ObjectNotFound(key)
    if is_checksum_rejection(exc):
        return IntegrityError(f"{label}: the store rejected the upload's checksum: {exc}", key=key)
    if status is not None or isinstance(exc, auth_exceptions.GoogleAuthError):
        return TerminalBlobError(f"{label}: {type(exc).__name__}: {exc}", key=key)
    return None
