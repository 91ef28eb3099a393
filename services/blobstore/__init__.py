"""The blob store: where logs and backups (the truth) live.

- `BlobStore` — the async contract (`model.py`): create-only `put_file` / `put_stream`, verified
  `get_to_file` / `open_read` / `get_bytes`, `head`, paged `list`, `delete`;
- drivers: `GcsStore` (google-cloud-storage), `FilesystemStore` (the embedded default),
  `MemoryStore` (the fake that enforces GCS generation preconditions);
- `open_store(url)` — `file:///path`, `gs://bucket/prefix[?endpoint=…]`, `memory://`;
- errors: `BlobStoreError` → `RetryableBlobError` | `TerminalBlobError` (→ `ObjectConflict`,
  `ObjectNotFound`, `IntegrityError`, `InvalidKey`), drawn in `services/blobstore/errors.py`.

Object metadata is a flat `dict[str, str]`; crc32c is GCS's base64 of the big-endian 4 bytes.
See docs/blobstore.md.
"""

from services.blobstore._checksum import Crc32c, Digest, crc32c_of_bytes
from services.blobstore._gcs_errors import RetrySettings
from services.blobstore._keys import validate_key, validate_prefix
from services.blobstore.errors import (
    BlobStoreError,
    IntegrityError,
    InvalidKey,
    ObjectConflict,
    ObjectNotFound,
    RetryableBlobError,
    TerminalBlobError,
)
from services.blobstore.factory import open_store
from services.blobstore.filesystem import FilesystemStore
from services.blobstore.gcs import GcsStore
from services.blobstore.memory import MemoryStore
from services.blobstore.model import (
    BlobStore,
    Metadata,
    ObjectInfo,
    ObjectReader,
    Readable,
    Source,
)

__all__ = [
    "BlobStore",
    "BlobStoreError",
    "Crc32c",
    "Digest",
    "FilesystemStore",
    "GcsStore",
    "IntegrityError",
    "InvalidKey",
    "MemoryStore",
    "Metadata",
    "ObjectConflict",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectReader",
    "Readable",
    "RetrySettings",
    "RetryableBlobError",
    "Source",
    "TerminalBlobError",
    "crc32c_of_bytes",
    "open_store",
    "validate_key",
    "validate_prefix",
]
