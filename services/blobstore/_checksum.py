"""crc32c as GCS reports it: base64 of the big-endian 4-byte value, computed while streaming."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

import google_crc32c

# google_crc32c ships py.typed but leaves its functions unannotated; one typed seam here.
_new_checksum: Any = google_crc32c.Checksum

#: How much of a local file is read per step when hashing or copying it.
FILE_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Digest:
    """What a stream of bytes hashed to: the comparison unit of create-only writes."""

    crc32c: str
    size: int


class Crc32c:
    """Incremental crc32c; feed it every chunk exactly once, in order."""

    __slots__ = ("_checksum", "size")

    def __init__(self) -> None:
        self._checksum: Any = _new_checksum()
        self.size = 0

    def update(self, data: bytes) -> None:
        self._checksum.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(crc32c=encode_crc32c(self._checksum.digest()), size=self.size)


def encode_crc32c(raw: bytes) -> str:
    """GCS's text form of a crc32c: base64 of the 4 big-endian bytes."""
    return base64.b64encode(raw).decode("ascii")


def crc32c_of_bytes(data: bytes) -> str:
    """The GCS-style crc32c of `data`."""
    hasher = Crc32c()
    hasher.update(data)
    return hasher.digest().crc32c


def digest_file(path: str | os.PathLike[str]) -> Digest:
    """Hash a local file without loading it whole (blocking: call it in a worker thread)."""
    hasher = Crc32c()
    with open(path, "rb") as f:
        while chunk := f.read(FILE_CHUNK):
            hasher.update(chunk)
    return hasher.digest()
