"""`catalog rebuild`: recreate the catalog's store from the bucket alone.

The bucket is self-describing (`services/archiver/keys.py`), so one listing is enough:

    <prefix>/<uid>/owner.json                        the database: engine, system id, name
    <prefix>/<uid>/<lineage>/logs/<thread>/<name>    a log, from its object metadata (with the
                                                     lineage's `enabled-threads` and
                                                     `disabled-threads`)
    <prefix>/<uid>/<lineage>/history/<name>          a timeline or backup history file, from its
                                                     metadata; a timeline history's content names
                                                     the parent timeline and the branch point
    <prefix>/<uid>/backups/<id>/manifest.json        a backup, from its manifest
    anything else (backup pieces, foreign objects)   counted, not indexed

A manifest is read as a backup when it holds the `backup.completed` payload, at its top level or
under `"backup"`; any other manifest is skipped with a warning (the executor's manifest format is
not fixed yet). An object whose metadata does not describe a log is skipped with a warning too:
a rebuild never guesses.

What the bucket cannot say: which node archived a log (rebuilt rows name none), backups and logs
deleted from the bucket (they are simply absent, as they should be; the tombstones the store
already held are kept, so a late event does not bring one back), and
an Oracle incarnation's parent (object metadata names the incarnation only; rebuilt incarnations
are roots, with the first SCN seen on them as their resetlogs SCN).

The store is emptied and refilled in one transaction: a rebuild that fails half-way leaves the
old contents, and readers never see a half-built store. A running catalog keeps its in-memory
index: restart it to load the rebuilt store.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import zstandard
from pydantic import ValidationError

from schemas import (
    DatabaseRef,
    Engine,
    Incarnation,
    Lineage,
    Lsn,
    Position,
    Scn,
    Timeline,
    lineage_from_key,
    parse_lsn,
)
from schemas.messages import BackupCompleted, LogArchived, ThreadDisabled
from services.blobstore import BlobStore, BlobStoreError, ObjectInfo
from services.catalog.index import CatalogIndex
from services.catalog.rows import UNKNOWN_NODE
from services.catalog.store import (
    CatalogStore,
    StoreConflict,
    StoreCounts,
    StreamPosition,
    Writer,
)

log = logging.getLogger("tidemark.catalog")

T = TypeVar("T")
#: Logs written to the store per round trip to its thread.
BATCH = 500
#: Warnings kept for the report; the count goes on.
KEPT_WARNINGS = 200


class Skipped(ValueError):
    """An object the rebuild cannot index; the message says why."""


@dataclass
class RebuildReport:
    """What a rebuild found and wrote."""

    stored: StoreCounts = field(default_factory=StoreCounts)
    objects: int = 0
    other_objects: int = 0
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    index: CatalogIndex = field(default_factory=CatalogIndex)

    def warn(self, message: str) -> None:
        log.warning("rebuild: %s", message)
        if len(self.warnings) < KEPT_WARNINGS:
            self.warnings.append(message)

    def skip(self, message: str) -> None:
        self.skipped += 1
        self.warn(message)


# -- reading objects -----------------------------------------------------------------------------


def _position(engine: Engine, text: str) -> Position | None:
    if not text:
        return None
    if engine is Engine.POSTGRES:
        return Lsn(value=parse_lsn(text))
    return Scn(value=int(text))


def _time(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _threads(text: str) -> tuple[int, ...] | None:
    """`enabled-threads` metadata (`1,2`); None when the archiver did not write it."""
    return tuple(int(t) for t in text.split(",")) if text else None


def _disabled(text: str) -> tuple[ThreadDisabled, ...] | None:
    """`disabled-threads` metadata (`2:7:1500-1800`: thread, its last sequence, the stretch it
    has no redo on); None when the archiver did not write it."""
    if not text:
        return None
    found = []
    for item in text.split(","):
        thread, sequence, stretch = item.split(":")
        at, until = stretch.split("-")
        found.append(
            ThreadDisabled(
                thread=int(thread),
                last_sequence=int(sequence),
                at=Scn(value=int(at)),
                until=Scn(value=int(until)),
            )
        )
    return tuple(found)


def _lineage_from_key(key: str, first: Position | None) -> Lineage:
    try:
        return lineage_from_key(key, branch_at=first)
    except ValueError as exc:
        raise Skipped(str(exc)) from None


def parse_history(timeline: int, text: str) -> Timeline:
    """A timeline history file: one line per ancestor, `parentTLI <tab> switchpoint <tab> why`;
    the last line is the immediate parent."""
    entries = [
        line.split("\t")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    try:
        parent = int(entries[-1][0])
        branch = Lsn(value=parse_lsn(entries[-1][1].strip()))
    except (ValueError, IndexError):
        raise Skipped(f"timeline {timeline} history is not readable") from None
    if not 1 <= parent < timeline:
        raise Skipped(f"timeline {timeline} history names parent {parent}")
    return Timeline(id=timeline, parent=parent, branch_lsn=branch)


def log_from_object(info: ObjectInfo, uid: str, lineage_key: str) -> LogArchived:
    """The `log.archived` fact an object's metadata states (`keys.object_metadata`)."""
    meta = info.metadata
    if meta.get("database") != uid or meta.get("lineage") != lineage_key:
        raise Skipped(
            f"{info.key}: metadata names database {meta.get('database')!r} lineage "
            f"{meta.get('lineage')!r}, its key says {uid!r} {lineage_key!r}"
        )
    try:
        engine = Engine(meta["engine"])
        first = _position(engine, meta.get("first", ""))
        return LogArchived(
            lineage=_lineage_from_key(lineage_key, first),
            kind=meta["kind"],
            thread=int(meta["thread"]),
            sequence=int(meta["sequence"]),
            first=first,
            next=_position(engine, meta.get("next", "")),
            first_time=_time(meta.get("first_time", "")),
            next_time=_time(meta.get("next_time", "")),
            size_bytes=int(meta["size"]),
            crc32c=meta["crc32c"],
            compression=meta.get("compression") or "none",
            object_key=info.key,
            file_name=meta.get("file_name") or None,
            node=UNKNOWN_NODE,
            archived_at=_time(meta["archived_at"]),
            stored_at=info.updated,
            enabled_threads=_threads(meta.get("enabled-threads", "")),
            disabled_threads=_disabled(meta.get("disabled-threads", "")),
        )
    except (KeyError, ValueError, ValidationError) as exc:
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else repr(exc)
        raise Skipped(f"{info.key}: metadata does not describe a log ({reason})") from None


def _decompress(data: bytes, compression: str) -> bytes:
    if compression in ("", "none"):
        return data
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise Skipped(f"history file compressed with {compression}, which the rebuild cannot read")


def backup_from_manifest(raw: bytes, key: str, backup_id: str) -> BackupCompleted:
    try:
        document = json.loads(raw)
        body = document.get("backup", document) if isinstance(document, dict) else None
        backup = BackupCompleted.model_validate(body)
    except (ValueError, ValidationError):
        raise Skipped(
            f"{key}: not a manifest this release can read (it needs the backup.completed "
            "payload, at the top level or under 'backup')"
        ) from None
    if backup.backup_id != backup_id:
        raise Skipped(f"{key}: manifest of backup {backup.backup_id}, stored under {backup_id}")
    return backup


# -- the rebuild ---------------------------------------------------------------------------------


class _StoreThread:
    """The store's transaction, held open on one thread while the listing runs on the loop."""

    def __init__(self, store: CatalogStore) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="catalog-rebuild")
        self._stack = ExitStack()
        self._store = store
        self.writer: Writer | None = None

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call, *args)

    async def __aenter__(self) -> _StoreThread:
        self.writer = await self.run(self._stack.enter_context, self._store.replacing())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.run(self._stack.__exit__, *exc)
        finally:
            self._pool.shutdown()


class _Rebuild:
    def __init__(
        self, blobs: BlobStore, prefix: str, txn: _StoreThread, report: RebuildReport
    ) -> None:
        self.blobs = blobs
        self.base = f"{prefix}/" if prefix else ""
        self.txn = txn
        self.report = report
        self.databases: dict[str, DatabaseRef | None] = {}
        self.pending: list[tuple[DatabaseRef, LogArchived]] = []

    async def run(self) -> None:
        async for info in self.blobs.list(self.base):
            self.report.objects += 1
            try:
                await self.take(info)
            except Skipped as exc:
                self.report.skip(str(exc))
            if len(self.pending) >= BATCH:
                await self.flush()
        await self.flush()

    async def take(self, info: ObjectInfo) -> None:
        parts = info.key[len(self.base) :].split("/")
        uid = parts[0]
        if len(parts) == 2 and parts[1] == "owner.json":
            return
        if len(parts) == 4 and parts[1] == "backups" and parts[3] == "manifest.json":
            await self.take_manifest(info, uid, parts[2])
        elif (len(parts), parts[2:3]) in ((5, ["logs"]), (4, ["history"])):
            await self.take_log(info, uid, parts[1])
        else:
            self.report.other_objects += 1

    async def take_log(self, info: ObjectInfo, uid: str, lineage_key: str) -> None:
        found = log_from_object(info, uid, lineage_key)
        database = await self.database(uid, found)
        if found.kind == "history" and isinstance(found.lineage, Timeline):
            raw = await self.blobs.get_bytes(info.key)
            text = _decompress(raw, found.compression.value).decode("utf-8", "replace")
            found = found.model_copy(update={"lineage": parse_history(found.lineage.id, text)})
        self.pending.append((database, found))

    async def take_manifest(self, info: ObjectInfo, uid: str, backup_id: str) -> None:
        backup = backup_from_manifest(await self.blobs.get_bytes(info.key), info.key, backup_id)
        database = await self.database(uid, backup)
        await self.flush()
        assert self.txn.writer is not None
        try:
            await self.txn.run(self.txn.writer.record_backup, database, backup)
        except StoreConflict as exc:
            raise Skipped(str(exc)) from None

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        if batch:
            for problem in await self.txn.run(_write_logs, self.txn.writer, batch):
                self.report.skip(problem)

    async def database(self, uid: str, fact: LogArchived | BackupCompleted) -> DatabaseRef:
        """The database a fact belongs to: its owner.json, else what the objects say."""
        if uid not in self.databases:
            self.databases[uid] = await self._owner(uid)
        known = self.databases[uid]
        if known is not None:
            return known
        engine = Engine.ORACLE if isinstance(fact.lineage, Incarnation) else Engine.POSTGRES
        try:
            guessed = DatabaseRef(uid=uid, engine=engine, name="unknown")
        except ValidationError:
            raise Skipped(f"{uid!r} is not a database uid") from None
        self.report.warn(f"{uid}: no readable owner.json; database named 'unknown'")
        self.databases[uid] = guessed
        return guessed

    async def _owner(self, uid: str) -> DatabaseRef | None:
        key = f"{self.base}{uid}/owner.json"
        try:
            body = json.loads(await self.blobs.get_bytes(key))
            system_id = body.get("system_id")
            return DatabaseRef(
                uid=uid,
                engine=Engine(body["engine"]),
                name=body.get("name") or "unknown",
                system_id=None if system_id is None else int(system_id),
            )
        except (BlobStoreError, ValueError, KeyError, TypeError, AttributeError):
            return None
        except ValidationError as exc:
            raise Skipped(f"{key}: not an owner record ({exc.errors()[0]['msg']})") from None


#: A rebuild that indexes fewer than this share of what the store holds is refused.
FAR_FEWER = 0.5


class RebuildRefused(RuntimeError):
    """The bucket holds far less than the store indexes: most likely the wrong place."""


@dataclass
class RebuildGuard:
    """Refuses, before the transaction commits, a rebuild that would empty the catalog."""

    indexed_before: int
    advice: str = "check --store and --prefix, or give --allow-empty"
    """What to check, in the words of whoever asked for the rebuild."""

    def accept(self, report: RebuildReport) -> None:
        indexed = report.objects - report.other_objects - report.skipped
        if report.objects == 0 or indexed == 0:
            raise RebuildRefused(
                f"the listing found {report.objects} objects and {indexed} to index, the store "
                f"indexes {self.indexed_before} logs and backups now; {self.advice}"
            )
        if self.indexed_before and indexed < self.indexed_before * FAR_FEWER:
            raise RebuildRefused(
                f"the listing found {indexed} objects to index ({report.objects} in all), the "
                f"store indexes {self.indexed_before} logs and backups now: under "
                f"{FAR_FEWER:.0%}; {self.advice}"
            )


def _write_logs(writer: Writer, batch: list[tuple[DatabaseRef, LogArchived]]) -> list[str]:
    return [str(result) for result in writer.record_logs(batch) if isinstance(result, Exception)]


async def rebuild(
    blobs: BlobStore,
    store: CatalogStore,
    prefix: str = "",
    *,
    accept: Callable[[RebuildReport], None] | None = None,
    position: tuple[str, StreamPosition] | None = None,
) -> RebuildReport:
    """Empty `store` and refill it from every object under `prefix` in `blobs`.

    `accept` sees the report once the listing is read and before the transaction commits;
    raising there rolls the store back to its old contents (`catalog rebuild`'s refusal of a
    bucket that holds far less than the catalog).

    `position` (a stream and a position in it, read before the listing began) is recorded in
    the same transaction: the rebuilt store holds every event up to there, since an object is
    written before its event is published. Without it the rebuilt store's position is unknown
    and a catalog starting on it replays what the stream holds (`catchup.py`).

    Returns the counts, the warnings (objects skipped and why) and an index loaded from the
    rebuilt store, for showing its windows.
    """
    report = RebuildReport()
    async with _StoreThread(store) as txn:
        await _Rebuild(blobs, prefix, txn, report).run()
        if accept is not None:
            accept(report)
        if position is not None:
            assert txn.writer is not None
            await txn.run(txn.writer.advance, *position)
    report.stored = await asyncio.to_thread(store.load_into, report.index)
    return report
