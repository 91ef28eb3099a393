"""`open_store(url)`: one string in settings chooses the driver.

    file:///var/lib/tidemark/archive            FilesystemStore rooted there (created if missing)
    gs://bucket                                 GcsStore on the whole bucket
    gs://bucket/some/prefix                     GcsStore, keys under some/prefix/
    gs://bucket/prefix?endpoint=http://127.0.0.1:9023
                                                GcsStore against an emulator (anonymous)
    memory://                                   a fresh MemoryStore (tests, demos)

`gs://` also takes `project=` and `chunk_size=` (bytes, a multiple of 256 KiB) in the query; keyword
arguments to `open_store` override the URL's. Without `endpoint`, the google client honours
`STORAGE_EMULATOR_HOST` and otherwise uses Application Default Credentials.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from services.blobstore.filesystem import FilesystemStore
from services.blobstore.gcs import GcsStore
from services.blobstore.memory import MemoryStore
from services.blobstore.model import BlobStore

_GCS_QUERY = {"endpoint": str, "project": str, "chunk_size": int}


def open_store(url: str, **options: Any) -> BlobStore:
    """The store a URL names (see the module docstring for the forms)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url}: file URLs name a local path (file:///path)")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"{url}: file URLs need an absolute path")
        return FilesystemStore(path, **options)
    if parts.scheme == "gs":
        if not parts.netloc:
            raise ValueError(f"{url}: gs URLs name a bucket (gs://bucket/prefix)")
        settings: dict[str, Any] = {}
        for name, values in parse_qs(parts.query, strict_parsing=bool(parts.query)).items():
            if name not in _GCS_QUERY:
                raise ValueError(f"{url}: unknown option {name!r} (known: {sorted(_GCS_QUERY)})")
            settings[name] = _GCS_QUERY[name](values[-1])
        settings.update(options)
        return GcsStore(parts.netloc, unquote(parts.path).strip("/"), **settings)
    if parts.scheme == "memory":
        return MemoryStore(**options)
    raise ValueError(f"{url}: unsupported blob store URL (use file://, gs:// or memory://)")
