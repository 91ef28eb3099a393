"""The errors a handler raises decide what happens to its message.

    Exception
     └── HandlerError
          ├── RetryableError   → nak(delay): redelivered with exponential backoff, until
          │                      MaxDeliver is exhausted, then dead-lettered
          └── TerminalError    → term() and a dead-letter record: retrying cannot help

Any other exception is treated as retryable: an unexpected fault is more often transient (a
connection reset, a full disk being cleaned) than permanent, and MaxDeliver still bounds it.
A message that fails contract validation is terminal by definition.
"""

from __future__ import annotations


class HandlerError(Exception):
    """Base of errors that carry a retry decision."""

    retryable: bool = False

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class RetryableError(HandlerError):
    """Trying again later may succeed. `delay` overrides the backoff for this attempt."""

    retryable = True

    def __init__(self, reason: str, *, code: str | None = None, delay: float | None = None):
        super().__init__(reason, code=code)
        self.delay = delay


class TerminalError(HandlerError):
    """Trying again cannot succeed (bad request, refused by policy, unrecoverable state)."""

    retryable = False


class BusError(RuntimeError):
    """The bus itself failed (cannot connect, cannot create a stream)."""
