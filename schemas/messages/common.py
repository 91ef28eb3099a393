"""Small value types several messages share."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from schemas._base import StrictModel

BackupId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
"""A backup's id, unique within its database; part of the backup's object prefix."""

Reason = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
"""A human sentence saying why. Never contains secrets: errors are scrubbed before they get here."""

ErrorCode = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_-]{1,31}$")]
"""A stable error code: a Tidemark code (`TM-BUS-001`) or an engine's (`ORA-19511`)."""


def _check_abs_path(value: str) -> str:
    # Paths reach pg_ctl, initdb and RMAN scripts: absolute, no traversal, no shell-significant
    # characters, so no quoting mistake downstream can turn a path into a second argument.
    parts = value.split("/")
    if any(part in (".", "..") for part in parts[1:]):
        raise ValueError("path must not contain '.' or '..' segments")
    return value


AbsPath = Annotated[
    str,
    StringConstraints(max_length=1024, pattern=r"^/[A-Za-z0-9._/+-]*$"),
    AfterValidator(_check_abs_path),
]


class Operation(StrEnum):
    """What a job does."""

    BACKUP = "backup"
    RESTORE = "restore"
    VERIFY = "verify"
    MIGRATION = "migration"
    """One step of a migration saga (`migration.<step>`); the result says which."""


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    LZ4 = "lz4"
    # RMAN compression algorithms (LOW/MEDIUM/HIGH need Advanced Compression).
    BASIC = "basic"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Failure(StrictModel):
    """Why something failed, and whether trying again can help."""

    reason: Reason
    code: ErrorCode | None = None
    retryable: bool = False


Port = Annotated[int, Field(ge=1, le=65535)]
Percent = Annotated[float, Field(ge=0.0, le=100.0)]
ProgressUnit = Literal["bytes", "files", "segments", "blocks"]
