"""`FilesystemStore`: the embedded default, one directory tree on local disk.

Layout: the object for key `a/b/c` is the file `<root>/a/b/c`; beside it live names no key can take
(keys never have a segment starting with `.`): `.c.meta.json` (its metadata sidecar), `.tmp-*`
(writes in progress) and `.lock-NN` (lock files, at most `LOCK_STRIPES` per directory).

A write, in the order that keeps every visible object complete and described:
1. stream the bytes into `.tmp-<random>` in the object's directory, hashing as they pass; fsync
   (a blocking file-like source is copied, hashed and synced in one worker-thread step, not one
   step per chunk); write the sidecar into another temp name and fsync it too;
2. under the key's `flock`: if the key exists, settle (same crc32c → success, else
   `ObjectConflict`); otherwise rename the sidecar into place and fsync the directory, so the
   metadata is durable before the object can be seen; then `os.link(tmp, final)` — atomic, and it
   refuses to replace anything — and fsync the directory again;
3. unlink the temp names.
A crash leaves at worst `.tmp-*` files or an orphan sidecar, never an object without metadata.
The lock is an `flock`, so it also excludes other processes sharing the root (archiver and
executor in `tidemark up`); it covers only the short publish step of one key (keys share one of
`LOCK_STRIPES` lock files per directory, chosen by name), so writes of different keys publish
side by side and their directory fsyncs share the filesystem's journal commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import stat
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, Any

from services.blobstore._checksum import FILE_CHUNK, Crc32c, Digest
from services.blobstore._common import (
    StoreBase,
    check_expected,
    drain,
    flush_and_sync,
    fsync_dir,
    iter_source,
    resolve_metadata,
    settle,
)
from services.blobstore._keys import validate_key, validate_prefix
from services.blobstore.errors import IntegrityError, ObjectNotFound, TerminalBlobError
from services.blobstore.model import Metadata, ObjectInfo, ObjectReader, Readable, Source

_FILE_MODE = 0o640
_DIR_MODE = 0o750
_SIDECAR_FORMAT = 1
#: Lock files per directory: publishing one key locks one of them, chosen by the key's name.
LOCK_STRIPES = 16


class FilesystemStore(StoreBase):
    """Objects as files under `root` (created if missing)."""

    #: The sidecar is written after the bytes: metadata may be a function of their digest.
    late_metadata = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FilesystemStore({str(self.root)!r})"

    # -- paths --------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        # validate_key already refused '..', '.', empty and absolute segments: nothing escapes.
        return self.root.joinpath(*validate_key(key).split("/"))

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}.meta.json")

    # -- writes -------------------------------------------------------------------------------

    async def put_stream(
        self,
        key: str,
        source: Source,
        metadata: Metadata | None = None,
        *,
        expect: Digest | None = None,
    ) -> ObjectInfo:
        path = self._path(key)
        chunks = iter_source(source)
        existing = await self.head(key)
        if existing is not None:
            return settle(key, existing, expect or await drain(chunks))
        if isinstance(source, Readable):
            # Reading it blocks anyway: copy it in one worker-thread step, not one per chunk.
            return await asyncio.to_thread(self._put_readable, key, path, source, metadata, expect)
        await asyncio.to_thread(self._ensure_dir, path.parent, key)
        tmp = path.with_name(f".tmp-{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            hasher = Crc32c()
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    await asyncio.to_thread(_write_hashed, out, hasher, chunk)
                await asyncio.to_thread(flush_and_sync, out)
            check_expected(key, hasher.digest(), expect)
            return await asyncio.to_thread(self._publish, key, path, tmp, hasher.digest(), metadata)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _put_readable(
        self,
        key: str,
        path: Path,
        source: Readable,
        metadata: Metadata | None,
        expect: Digest | None,
    ) -> ObjectInfo:
        """`put_stream` from a blocking file-like, start to publish (blocking)."""
        self._ensure_dir(path.parent, key)
        tmp = path.with_name(f".tmp-{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            hasher = Crc32c()
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(FILE_CHUNK):
                    _write_hashed(out, hasher, bytes(chunk))
                flush_and_sync(out)
            check_expected(key, hasher.digest(), expect)
            return self._publish(key, path, tmp, hasher.digest(), metadata)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _ensure_dir(self, directory: Path, key: str) -> None:
        """Create missing directories one level at a time, fsyncing each parent, so a new
        directory entry is as durable as the object that will be linked into it."""
        missing: list[Path] = []
        probe = directory
        while not probe.is_dir():
            # Re-check is_dir: a concurrent writer may have just made this very directory.
            if probe == self.root or (probe.exists() and not probe.is_dir()):
                raise TerminalBlobError(
                    f"{key}: {probe.relative_to(self.root)} is an object, so it cannot also be a "
                    "prefix on the filesystem driver",
                    key=key,
                )
            missing.append(probe)
            probe = probe.parent
        for new_dir in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a concurrent writer made it first
                new_dir.mkdir(mode=_DIR_MODE)
            fsync_dir(new_dir.parent)

    def _publish(
        self, key: str, path: Path, tmp: Path, local: Digest, metadata: Metadata | None
    ) -> ObjectInfo:
        info = ObjectInfo(
            key=key,
            size=local.size,
            crc32c=local.crc32c,
            metadata=resolve_metadata(metadata, local),
            generation=time.time_ns(),
            updated=datetime.now(UTC),
        )
        # Written and synced before the lock: only renames and directory fsyncs happen under it.
        sidecar_tmp = self._write_sidecar_tmp(path, info)
        try:
            with _locked(path):
                existing = self._read_info(key, path)
                if existing is not None:
                    return settle(key, existing, local)
                if path.is_dir():
                    raise TerminalBlobError(
                        f"{key}: is a prefix of other objects, so it cannot also be an object on "
                        "the filesystem driver",
                        key=key,
                    )
                # Replacing is right here: under the lock, with no live object, any existing
                # sidecar is an orphan from a crashed write.
                os.replace(sidecar_tmp, self._sidecar(path))
                # The sidecar must be durable before the object is: a visible object always has
                # its metadata, even after a power cut between these two steps.
                fsync_dir(path.parent)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    # Only reachable if something wrote here without the lock; never replace.
                    return settle(key, self._read_info(key, path), local)
                fsync_dir(path.parent)
                return info
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sidecar_tmp)

    def _write_sidecar_tmp(self, path: Path, info: ObjectInfo) -> Path:
        """The sidecar of `info`, written and synced under a temporary name; returns that name."""
        tmp = path.with_name(f".tmp-{secrets.token_hex(8)}.meta")
        body = json.dumps(
            {
                "format": _SIDECAR_FORMAT,
                "size": info.size,
                "crc32c": info.crc32c,
                "generation": info.generation,
                "updated": info.updated.isoformat(),
                "metadata": info.metadata,
            },
            sort_keys=True,
        ).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                flush_and_sync(out)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp

    # -- reads --------------------------------------------------------------------------------

    def _read_info(self, key: str, path: Path) -> ObjectInfo | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None  # a directory: a prefix of other keys, not an object
        try:
            raw: dict[str, Any] = json.loads(self._sidecar(path).read_bytes())
        except FileNotFoundError:
            if not path.exists():
                return None  # deleted between the two reads
            raise IntegrityError(f"{key}: object has no metadata sidecar", key=key) from None
        except ValueError as exc:
            raise IntegrityError(f"{key}: unreadable metadata sidecar: {exc}", key=key) from exc
        return ObjectInfo(
            key=key,
            size=int(raw["size"]),
            crc32c=str(raw["crc32c"]),
            metadata={str(k): str(v) for k, v in raw["metadata"].items()},
            generation=int(raw["generation"]),
            updated=datetime.fromisoformat(raw["updated"]),
        )

    async def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return await asyncio.to_thread(self._read_info, key, path)

    def _open(self, key: str) -> tuple[ObjectInfo, IO[bytes]]:
        path = self._path(key)
        info = self._read_info(key, path)
        if info is None:
            raise ObjectNotFound(key)
        try:
            return info, open(path, "rb")  # closed by open_read
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    @asynccontextmanager
    async def open_read(
        self, key: str, *, chunk_size: int | None = None
    ) -> AsyncIterator[ObjectReader]:
        info, f = await asyncio.to_thread(self._open, key)
        try:
            yield ObjectReader(info, f, chunk_size or self.read_chunk_size)
        finally:
            f.close()

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        validate_prefix(prefix)
        walk = self._walk(prefix)
        while True:
            page = await asyncio.to_thread(lambda: [*islice(walk, page_size)])
            for info in page:
                yield info
            if len(page) < page_size:
                return

    def _walk(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under `prefix` in exact key order: siblings sort by name, with a directory
        compared as `name/`, which is how its keys compare against a sibling file's key."""
        base, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*base.split("/")) if base else self.root
        yield from self._walk_dir(start, base, prefix)

    def _walk_dir(self, directory: Path, rel: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = [
                    (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
                    for e in it
                    if not e.name.startswith(".")
                ]
        except (FileNotFoundError, NotADirectoryError):
            return
        for sort_name, entry in sorted(entries, key=lambda pair: pair[0]):
            key = f"{rel}/{entry.name}" if rel else entry.name
            if sort_name.endswith("/"):
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk_dir(Path(entry.path), key, prefix)
            elif key.startswith(prefix):
                info = self._read_info(key, Path(entry.path))
                if info is not None:
                    yield info

    # -- delete -------------------------------------------------------------------------------

    async def delete(self, key: str, *, generation: int | None = None) -> bool:
        path = self._path(key)
        return await asyncio.to_thread(self._delete, key, path, generation)

    def _delete(self, key: str, path: Path, generation: int | None) -> bool:
        if not path.parent.is_dir():
            return False
        with _locked(path):
            info = self._read_info(key, path)
            if info is None or (generation is not None and info.generation != generation):
                return False
            # Object first, then sidecar: the reverse of a write, so no object is ever bare.
            os.unlink(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._sidecar(path))
            fsync_dir(path.parent)
            return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive hold on the key whose object is `path` (one lock stripe of its directory)."""
    stripe = zlib.crc32(path.name.encode()) % LOCK_STRIPES
    lock = path.parent / f".lock-{stripe:02d}"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _write_hashed(out: IO[bytes], hasher: Crc32c, chunk: bytes) -> None:
    out.write(chunk)
    hasher.update(chunk)
