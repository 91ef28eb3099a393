"""Object keys: one portable key space for every driver.

A key is `/`-separated segments. Rejected, because they could escape a filesystem root or would
not mean the same thing on every driver: empty keys, absolute keys, empty segments (`a//b`, a
trailing `/`), `.` and `..`, any segment starting with `.` (those names are reserved for the
filesystem driver's temporary files, metadata sidecars and locks), backslashes, control
characters, and keys longer than GCS's 1024 UTF-8 bytes.
"""

from __future__ import annotations

from services.blobstore.errors import InvalidKey

MAX_KEY_BYTES = 1024


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a valid object key, else raise `InvalidKey`."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string", key=str(key))
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key longer than {MAX_KEY_BYTES} bytes", key=key)
    if key.startswith("/"):
        raise InvalidKey(f"{key!r}: object keys are relative, not absolute", key=key)
    if "\\" in key:
        raise InvalidKey(f"{key!r}: backslash is not a key separator", key=key)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise InvalidKey(f"{key!r}: control characters are not allowed", key=key)
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(f"{key!r}: empty path segment", key=key)
        if segment in (".", ".."):
            raise InvalidKey(f"{key!r}: '.' and '..' segments are not allowed", key=key)
        if segment.startswith("."):
            raise InvalidKey(f"{key!r}: segments starting with '.' are reserved", key=key)
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key-like string that may end with `/` or mid-segment."""
    if prefix == "":
        return prefix
    core = prefix[:-1] if prefix.endswith("/") else prefix
    if not core:
        raise InvalidKey("listing prefix '/' is absolute", key=prefix)
    validate_key(core)
    return prefix
