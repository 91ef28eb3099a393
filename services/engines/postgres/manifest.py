"""A PostgreSQL base backup in the object store.

    <prefix>/<uid>/backups/<backup-id>/base.tar.00000           the tar stream, in parts
    <prefix>/<uid>/backups/<backup-id>/base.tar.00001           (`.zst` appended when compressed)
    ...
    <prefix>/<uid>/backups/<backup-id>/manifest.json            written last: the backup exists
                                                                 from the moment it does

The stream is `pg_basebackup -D - -Ft -X none`: one tar of the data directory, PostgreSQL's own
`backup_manifest` inside it; the WAL from `start` to `consistent_at` comes from the archive.
The manifest holds the `backup.completed` payload under `"backup"` (so `catalog rebuild` reads it
as a backup) and the engine's details under `"postgres"`.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from schemas import StrictModel
from schemas.messages import BackupCompleted
from services.blobstore.layout import backup_prefix, manifest_key

__all__ = [
    "MANIFEST_FORMAT",
    "BaseManifest",
    "Part",
    "PostgresBase",
    "backup_prefix",
    "manifest_key",
    "part_key",
]

MANIFEST_FORMAT: Final = "tidemark.pg-base/1"


class Part(StrictModel):
    key: str
    size: int = Field(ge=0, description="stored bytes (compressed, when compressed)")
    crc32c: str


class PostgresBase(StrictModel):
    """What a restore needs beyond the `backup.completed` payload."""

    pg_version: int = Field(description="server_version_num of the source, e.g. 150008")
    system_id: int = Field(ge=0, lt=1 << 64)
    timeline: int = Field(ge=1)
    compression: Literal["none", "zstd"] = "none"
    tar_bytes: int = Field(ge=0, description="the uncompressed tar stream's length")
    parts: list[Part]
    label: str = ""


class BaseManifest(StrictModel):
    format: Literal["tidemark.pg-base/1"] = MANIFEST_FORMAT
    backup: BackupCompleted
    postgres: PostgresBase


def part_key(prefix: str, uid: str, backup_id: str, index: int, compression: str) -> str:
    suffix = ".zst" if compression == "zstd" else ""
    return f"{backup_prefix(prefix, uid, backup_id)}base.tar.{index:05d}{suffix}"
