"""The catalog's durable index: every database, lineage, log and backup it has been told about.

SQLite (WAL mode, `synchronous=FULL`) is the embedded default; PostgreSQL when the catalog is
replicated. The store is the catalog's memory across restarts, not the truth: the truth is the
bucket, and `catalog rebuild` recreates the store from it (`rebuild.py`). At start-up every row
is loaded into a `CatalogIndex` (`load_into`), which answers the queries.

Every write is keyed by the fact's natural key, so a redelivered event changes nothing:

- `databases` (uid): a second write fills a missing system id, nothing else;
- `lineages` (database, key such as `tl-00000002` or `inc-1180000000`): it fills a missing
  parent and branch point, nothing else;
- `logs` (database, lineage, thread, sequence, kind, file name): same range and crc32c is a
  no-op, anything else is a `StoreConflict`;
- `backups` (database, backup id): same lineage, positions and manifest is a no-op, anything
  else is a `StoreConflict`; `backup_tombstones` remember deleted backups, so a late
  `backup.completed` never brings one back;
- `log_tombstones` (a log's natural key): a deleted log stays deleted. A `log.archived` whose
  object was stored at or before the deletion (or is exactly the object deleted) is that object
  again, redelivered or late: `Recorded.DELETED`, nothing written. One stored after it is a
  distinct new object under the same name and is stored as new;
- `lineage_threads` (database, lineage, thread): the threads a lineage must be recovered on,
  reported enabled by the archiver or seen on a log. Only ever added to: deleting every log of
  a thread does not make the thread optional.
- `thread_disables` (database, lineage, thread, disabled at): a stretch a thread has no redo
  on, reported by the archiver. A later report of the same disable only extends it (the
  highest end and last sequence); it stays when logs go, like the threads.

A conflict keeps the first fact: two different logs claiming one name is an alarm for a person,
never something to settle by overwriting. Positions are stored per `columns.U64`.

Methods are blocking; the service calls them in a worker thread.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Table, bindparam, create_engine, event, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.exc import IntegrityError

from schemas import DatabaseRef, Lineage, utcnow
from schemas import Engine as DbEngine
from schemas.messages import BackupCompleted, LogArchived, ThreadDisabled
from services.catalog.columns import U64, UtcDateTime
from services.catalog.index import CatalogIndex, StoredLog
from services.catalog.migrations import (
    MigrationError,
    current_version,
    latest,
    migrate,
    schema_version,
)
from services.catalog.rows import (
    backup_model,
    backup_row,
    lineage_model,
    lineage_row,
    log_row,
    name_of,
)
from services.catalog.settings import check_catalog_url
from services.catalog.tables import (
    backup_tombstones,
    backups,
    databases,
    lineage_threads,
    lineages,
    log_tombstones,
    logs,
    metadata,
    stream_positions,
    thread_disables,
)

log = logging.getLogger("tidemark.catalog")


class StoreError(RuntimeError):
    """Base of the store's own errors (a database that is down raises SQLAlchemy's errors)."""


class StoreConflict(StoreError):
    """A fact with a known natural key but different content. The first one is kept."""


class Recorded(StrEnum):
    """What writing one fact did."""

    NEW = "new"
    """It was not known: stored now."""

    KNOWN = "known"
    """This exact fact was stored already (a redelivery): nothing changed."""

    DELETED = "deleted"
    """A backup or log deleted earlier: it stays deleted, nothing changed."""


@dataclass(frozen=True)
class StoreCounts:
    databases: int = 0
    lineages: int = 0
    logs: int = 0
    backups: int = 0


# -- engines ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamPosition:
    """How far into a stream the store has applied: every event the catalog consumes, up to
    `sequence`, is in the store (`stream_positions`)."""

    sequence: int
    stream_created: datetime | None = None
    """The stream's creation time: a stream made again restarts its sequences at 1."""


def create_catalog_engine(url: str, *, password_file: Path | None = None) -> Engine:
    """An engine for `url`: SQLite in WAL mode with transactional DDL, or PostgreSQL (psycopg).

    The password, if any, comes from `password_file` (or libpq's own PGPASSFILE), never from
    the URL: `check_catalog_url` refuses one that carries it.
    """
    check_catalog_url(url)
    parsed: URL = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args: dict[str, Any] = {"connect_timeout": 10}
        if password_file is not None:
            connect_args["password"] = password_file.read_text().strip()
        return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Python's sqlite3 would open transactions itself, but not before DDL, so a migration could
    # half-apply. With isolation_level None it opens none, and `_sqlite_begin` opens each one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the event is acked, even across a power cut.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
    # writes can fail at once with SQLITE_BUSY instead of waiting out the busy timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


# -- writes on one connection (shared by the event path and the rebuild) -----------------------


def _find_by_key(table: Table) -> Any:
    """`SELECT … WHERE <primary key> = :k_<column>…`, built once (and compiled once)."""
    return select(table).where(*(c == bindparam(f"k_{c.name}") for c in table.primary_key))


_FIND = {table.name: _find_by_key(table) for table in metadata.sorted_tables}

# The logs of one thread among some sequences: what a batch needs to know before inserting.
_KNOWN_LOGS = select(logs.c.sequence, logs.c.name, logs.c.first, logs.c.next, logs.c.crc32c).where(
    (logs.c.database_uid == bindparam("uid"))
    & (logs.c.lineage == bindparam("lineage"))
    & (logs.c.thread == bindparam("thread"))
    & (logs.c.kind == bindparam("kind"))
    & logs.c.sequence.in_(bindparam("sequences", expanding=True))
)


# What the index takes of a log row, in `StoredLog`'s order (its file name is the row's name).
_STORED_LOG_COLUMNS = (
    "lineage",
    "kind",
    "name",
    "thread",
    "sequence",
    "first",
    "next",
    "first_time",
    "next_time",
    "archived_at",
    "object_key",
    "size_bytes",
    "crc32c",
)

_BULK_LOG_INSERTS: dict[str, tuple[str, list[tuple[str, Any]]]] = {}


def _bulk_log_insert(dialect: Dialect) -> tuple[str, list[tuple[str, Any]]]:
    """SQLite's own INSERT of a `logs` row (positional), and each column's name and bind
    processor (None where the value goes as it is)."""
    assert dialect.name == "sqlite", "positional parameters: SQLite's paramstyle"
    if dialect.name not in _BULK_LOG_INSERTS:
        statement = str(logs.insert().compile(dialect=dialect))
        columns = [(c.name, c.type.bind_processor(dialect)) for c in logs.columns]
        _BULK_LOG_INSERTS[dialect.name] = (statement, columns)
    return _BULK_LOG_INSERTS[dialect.name]


LogResult = bool | Recorded | StoreConflict
"""What storing one log of a batch did: True new, False known, `Recorded.DELETED` when it is a
deleted log again, or why it was refused."""

# The tombstones of one thread among some sequences (as `_KNOWN_LOGS`).
_TOMBSTONES = select(
    log_tombstones.c.sequence,
    log_tombstones.c.name,
    log_tombstones.c.deleted_at,
    log_tombstones.c.stored_at,
    log_tombstones.c.crc32c,
).where(
    (log_tombstones.c.database_uid == bindparam("uid"))
    & (log_tombstones.c.lineage == bindparam("lineage"))
    & (log_tombstones.c.thread == bindparam("thread"))
    & (log_tombstones.c.kind == bindparam("kind"))
    & log_tombstones.c.sequence.in_(bindparam("sequences", expanding=True))
)


def is_deleted_object(
    tombstone: tuple[datetime, datetime | None, str | None], stored_at: datetime, crc32c: str
) -> bool:
    """Whether a log stored at `stored_at` with `crc32c` is the object a tombstone buried.

    An object stored at or before the deletion existed when it was deleted: it is that object
    (a redelivery or a late event), not a new one. The deleted object's own (store time,
    crc32c), when the catalog held it, is matched too, in case the deleting side's clock is
    behind the archiver's.
    """
    deleted_at, buried_stored_at, buried_crc32c = tombstone
    return stored_at <= deleted_at or (stored_at, crc32c) == (buried_stored_at, buried_crc32c)


_LogKey = tuple[str, str, int, int, str, str]
"""A log's natural key: database, lineage, thread, sequence, kind, file name."""


def _log_key_of(row: dict[str, Any]) -> _LogKey:
    return (
        row["database_uid"],
        row["lineage"],
        row["thread"],
        row["sequence"],
        row["kind"],
        row["name"],
    )


class Writer:
    """Idempotent writes on one open transaction.

    Statements are built once and executed with parameters, and what this transaction has
    already written about a database or lineage is remembered: a rebuild writes millions of
    logs of a handful of lineages, and should not ask about each lineage millions of times.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # SQLite's BEGIN IMMEDIATE already excludes every other writer; only PostgreSQL
        # replicas can race to insert one key, and only there is the savepoint worth its cost.
        self._racy = conn.dialect.name == "postgresql"
        self._databases: dict[str, DatabaseRef] = {}
        self._lineages: dict[tuple[str, str], dict[str, Any]] = {}
        self._threads: dict[tuple[str, str, int], bool] = {}
        self._disables: dict[tuple[str, str, int, int], tuple[int, int]] = {}

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: what the block wrote is undone if it raises."""
        with self.conn.begin_nested():
            yield

    def _find(self, table: Table, row: dict[str, Any]) -> Any:
        key = {f"k_{c.name}": row[c.name] for c in table.primary_key}
        return self.conn.execute(_FIND[table.name], key).one_or_none()

    def record_database(self, database: DatabaseRef) -> bool:
        """Insert the database, or fill a system id that was unknown. True if inserted."""
        if self._databases.get(database.uid) == database:
            return False
        row = {
            "uid": database.uid,
            "engine": database.engine.value,
            "name": database.name,
            "system_id": database.system_id,
        }
        found = self._find(databases, row)
        inserted = False
        if found is None:
            inserted = self._insert(databases, row)
        elif found.engine != database.engine.value:
            raise StoreConflict(
                f"database {database.uid} is {found.engine} in the catalog, "
                f"not {database.engine.value}"
            )
        elif found.system_id is None and database.system_id is not None:
            self.conn.execute(
                databases.update()
                .where(databases.c.uid == database.uid)
                .values(system_id=database.system_id)
            )
        elif database.system_id is not None and found.system_id != database.system_id:
            raise StoreConflict(
                f"database {database.uid} has system id {found.system_id} in the catalog, "
                f"not {database.system_id}"
            )
        self._databases[database.uid] = database
        return inserted

    def record_lineage(self, uid: str, lineage: Lineage) -> bool:
        """Insert the lineage, or learn its parent if that was unknown. True if anything changed.

        A WAL segment names only its timeline; the timeline's history file names the parent and
        the branch point, and may arrive later (or earlier), so knowledge only ever grows.
        """
        row = lineage_row(uid, lineage)
        cache_key = (uid, row["key"])
        cached = self._lineages.get(cache_key)
        if cached is not None and (
            row["parent"] is None
            or (cached["parent"], cached["branch_at"]) == (row["parent"], row["branch_at"])
        ):
            return False
        found = self._find(lineages, row)
        changed = False
        if found is None:
            changed = self._insert(lineages, row)
            known = row
        elif found.parent is None and row["parent"] is not None:
            self.conn.execute(
                lineages.update()
                .where((lineages.c.database_uid == uid) & (lineages.c.key == row["key"]))
                .values(parent=row["parent"], branch_at=row["branch_at"], number=row["number"])
            )
            changed, known = True, row
        else:
            known = dict(found._mapping)
            if row["parent"] is not None and (found.parent, found.branch_at) != (
                row["parent"],
                row["branch_at"],
            ):
                log.warning(
                    "%s %s: parent %s at %s is known; ignoring parent %s at %s",
                    uid,
                    row["key"],
                    found.parent,
                    found.branch_at,
                    row["parent"],
                    row["branch_at"],
                )
                # Remember the parent we ignored, so it is reported once, not per log.
                known = {**known, "parent": row["parent"], "branch_at": row["branch_at"]}
        self._lineages[cache_key] = known
        return changed

    def record_log(self, database: DatabaseRef, log: LogArchived) -> bool | Recorded:
        """Store one log. True if it is new; False if this exact log was known;
        `Recorded.DELETED` if it is a log deleted before (a tombstone buries it).

        Raises `StoreConflict` when the same log (same lineage, thread, sequence, kind and
        name) is known with another range or checksum: the first is kept.
        """
        self.record_database(database)
        self.record_lineage(database.uid, log.lineage)
        row = log_row(database.uid, log)
        found = self._find(logs, row)
        if found is not None:
            known = (found.first, found.next, found.crc32c)
            if known != (row["first"], row["next"], row["crc32c"]):
                raise _log_conflict(database, log, known, row)
        self.record_threads(database.uid, log)
        if found is not None:
            return False
        buried = self._find(log_tombstones, row)
        if buried is not None and is_deleted_object(
            (buried.deleted_at, buried.stored_at, buried.crc32c), log.stored_at, log.crc32c
        ):
            return Recorded.DELETED
        return self._insert(logs, row)

    def record_threads(self, uid: str, log: LogArchived) -> None:
        """Remember the threads `log` shows its lineage has (its own, and those reported), and
        the stretches it reports any was disabled on."""
        wanted: list[tuple[int, bool]] = []
        if log.kind in ("redo", "wal"):
            wanted.append((log.thread, False))
        wanted.extend((thread, True) for thread in log.enabled_threads or ())
        for thread, reported in wanted:
            key = (uid, log.lineage.key, thread)
            known = self._threads.get(key)
            if known is not None and (known or not reported):
                continue
            row = {"database_uid": uid, "lineage": log.lineage.key, "thread": thread}
            found = self._find(lineage_threads, row)
            if found is None:
                self._insert(lineage_threads, {**row, "reported": reported})
            elif reported and not found.reported:
                self.conn.execute(
                    lineage_threads.update()
                    .where(
                        (lineage_threads.c.database_uid == uid)
                        & (lineage_threads.c.lineage == log.lineage.key)
                        & (lineage_threads.c.thread == thread)
                    )
                    .values(reported=True)
                )
            self._threads[key] = reported or bool(found is not None and found.reported)
        for disabled in log.disabled_threads or ():
            self.record_disable(uid, log.lineage.key, disabled)

    def record_disable(self, uid: str, lineage: str, disabled: ThreadDisabled) -> None:
        """Remember a stretch a thread was disabled on, or extend the one known."""
        row = {
            "database_uid": uid,
            "lineage": lineage,
            "thread": disabled.thread,
            "disabled_at": disabled.at.value,
        }
        wanted = (disabled.last_sequence, disabled.until.value)
        key = (uid, lineage, disabled.thread, disabled.at.value)
        known = self._disables.get(key)
        if known is not None and known[0] >= wanted[0] and known[1] >= wanted[1]:
            return
        found = self._find(thread_disables, row)
        if found is None:
            self._insert(
                thread_disables, {**row, "last_sequence": wanted[0], "disabled_until": wanted[1]}
            )
            merged = wanted
        else:
            merged = (
                max(found.last_sequence, wanted[0]),
                max(found.disabled_until, wanted[1]),
            )
            if merged != (found.last_sequence, found.disabled_until):
                self.conn.execute(
                    thread_disables.update()
                    .where(
                        (thread_disables.c.database_uid == uid)
                        & (thread_disables.c.lineage == lineage)
                        & (thread_disables.c.thread == disabled.thread)
                        & (thread_disables.c.disabled_at == disabled.at.value)
                    )
                    .values(last_sequence=merged[0], disabled_until=merged[1])
                )
        self._disables[key] = merged

    def record_logs(self, facts: Sequence[tuple[DatabaseRef, LogArchived]]) -> list[LogResult]:
        """Store many logs, in order, each exactly as `record_log` would; per log, True if new,
        False if known, or the `StoreConflict` that kept it out (nothing of it is written, and
        the others are stored all the same).

        On SQLite the logs already known are read with one query per thread and the new ones
        inserted with one statement: a log at a time costs two round trips through SQLAlchemy,
        which is most of the catalog's ingest time. On PostgreSQL, where replicas can race to
        insert one key, each log keeps its own savepoint.
        """
        if self._racy:
            return [self._record_log_alone(database, log) for database, log in facts]
        rows = [log_row(database.uid, log) for database, log in facts]
        known = self._known_logs(rows)
        buried = self._tombstones(rows)
        results: list[LogResult] = []
        new_rows: list[dict[str, Any]] = []
        for (database, log), row in zip(facts, rows, strict=True):
            key = _log_key_of(row)
            found = known.get(key)
            if found is not None and found != (row["first"], row["next"], row["crc32c"]):
                results.append(_log_conflict(database, log, found, row))
                continue
            try:
                # Before the insert: the log's row refers to both.
                self.record_database(database)
                self.record_lineage(database.uid, log.lineage)
            except StoreConflict as exc:
                results.append(exc)
                continue
            self.record_threads(database.uid, log)
            tombstone = buried.get(key)
            if (
                found is None
                and tombstone is not None
                and is_deleted_object(tombstone, log.stored_at, log.crc32c)
            ):
                results.append(Recorded.DELETED)
                continue
            if found is None:
                # A second copy later in the same batch is then known, as it would be in order.
                known[key] = (row["first"], row["next"], row["crc32c"])
                new_rows.append(row)
            results.append(found is None)
        if new_rows:
            self._insert_logs(new_rows)
        return results

    def _insert_logs(self, rows: list[dict[str, Any]]) -> None:
        """One `executemany` of the rows, bound by the columns' own processors: SQLAlchemy's
        per-row parameter handling would cost more than SQLite's inserts."""
        statement, columns = _bulk_log_insert(self.conn.dialect)
        values = [
            tuple(
                [row[name] if process is None else process(row[name]) for name, process in columns]
            )
            for row in rows
        ]
        self.conn.exec_driver_sql(statement, values)

    def _record_log_alone(self, database: DatabaseRef, log: LogArchived) -> LogResult:
        try:
            # Its own savepoint: a conflict must not keep what it wrote about its lineage.
            with self.conn.begin_nested():
                return self.record_log(database, log)
        except StoreConflict as exc:
            return exc

    def _known_logs(self, rows: list[dict[str, Any]]) -> dict[_LogKey, tuple[Any, Any, Any]]:
        """(first, next, crc32c) of every stored log sharing a natural key with one of `rows`."""
        threads: dict[tuple[str, str, int, str], set[int]] = {}
        for row in rows:
            group = (row["database_uid"], row["lineage"], row["thread"], row["kind"])
            threads.setdefault(group, set()).add(row["sequence"])
        known: dict[_LogKey, tuple[Any, Any, Any]] = {}
        for (uid, lineage, thread, kind), sequences in threads.items():
            params = {
                "uid": uid,
                "lineage": lineage,
                "thread": thread,
                "kind": kind,
                "sequences": sorted(sequences),
            }
            for found in self.conn.execute(_KNOWN_LOGS, params):
                key = (uid, lineage, thread, found.sequence, kind, found.name)
                known[key] = (found.first, found.next, found.crc32c)
        return known

    def _tombstones(
        self, rows: list[dict[str, Any]]
    ) -> dict[_LogKey, tuple[datetime, datetime | None, str | None]]:
        """(deleted at, stored at, crc32c) of every tombstone sharing a key with one of `rows`."""
        threads: dict[tuple[str, str, int, str], set[int]] = {}
        for row in rows:
            group = (row["database_uid"], row["lineage"], row["thread"], row["kind"])
            threads.setdefault(group, set()).add(row["sequence"])
        found: dict[_LogKey, tuple[datetime, datetime | None, str | None]] = {}
        for (uid, lineage, thread, kind), sequences in threads.items():
            params = {
                "uid": uid,
                "lineage": lineage,
                "thread": thread,
                "kind": kind,
                "sequences": sorted(sequences),
            }
            for t in self.conn.execute(_TOMBSTONES, params):
                key = (uid, lineage, thread, t.sequence, kind, t.name)
                found[key] = (t.deleted_at, t.stored_at, t.crc32c)
        return found

    def forget_log(self, database_uid: str, log: LogArchived) -> bool:
        """Remove exactly this log (same range and checksum), e.g. one the index refused."""
        where = _log_key(database_uid, log) & (logs.c.crc32c == log.crc32c)
        return self.conn.execute(logs.delete().where(where)).rowcount > 0

    def delete_log(
        self,
        database_uid: str,
        lineage: str,
        kind: str,
        thread: int,
        sequence: int,
        name: str,
        *,
        object_key: str,
        deleted_at: datetime,
        reason: str,
    ) -> bool:
        """Forget a log and bury it (`log_tombstones`). True if it was stored.

        A deletion may come before the log it deletes (events out of order): the tombstone is
        written all the same, and buries the log when it arrives.
        """
        key = {
            "database_uid": database_uid,
            "lineage": lineage,
            "thread": thread,
            "sequence": sequence,
            "kind": kind,
            "name": name,
        }
        found = self._find(logs, key)
        buried = self._find(log_tombstones, key)
        stone = {
            "object_key": object_key,
            "deleted_at": deleted_at,
            "stored_at": found.stored_at if found is not None else None,
            "crc32c": found.crc32c if found is not None else None,
            "reason": reason[:2000],
        }
        if buried is None:
            self._insert(log_tombstones, {**key, **stone})
        else:
            if found is None:
                stone.update(stored_at=buried.stored_at, crc32c=buried.crc32c)
            # The latest deletion buries everything stored before it.
            stone["deleted_at"] = max(deleted_at, buried.deleted_at)
            self.conn.execute(
                log_tombstones.update()
                .where(*(log_tombstones.c[name_] == value for name_, value in key.items()))
                .values(**stone)
            )
        if found is None:
            return False
        where = (*(logs.c[name_] == value for name_, value in key.items()),)
        return self.conn.execute(logs.delete().where(*where)).rowcount > 0

    def record_backup(self, database: DatabaseRef, backup: BackupCompleted) -> Recorded:
        """Store one backup; `DELETED` if it was deleted before (it is not stored again).

        Raises `StoreConflict` when the id is known with another lineage, positions or
        manifest: the first is kept.
        """
        ids = {"database_uid": database.uid, "backup_id": backup.backup_id}
        if self._find(backup_tombstones, ids) is not None:
            return Recorded.DELETED
        self.record_database(database)
        self.record_lineage(database.uid, backup.lineage)
        row = backup_row(database.uid, backup)
        found = self._find(backups, row)
        if found is None:
            return Recorded.NEW if self._insert(backups, row) else Recorded.KNOWN
        compared = ("lineage", "start", "consistent_at", "manifest_key")
        if any(getattr(found, name) != row[name] for name in compared):
            raise StoreConflict(
                f"{database.uid} backup {backup.backup_id} is known with another lineage, "
                "positions or manifest; keeping the first"
            )
        return Recorded.KNOWN

    def delete_backup(
        self, database_uid: str, backup_id: str, *, reason: str, deleted_at: datetime
    ) -> bool:
        """Forget a backup and remember that it is gone. True if it was indexed."""
        ids = {"database_uid": database_uid, "backup_id": backup_id}
        if self._find(backup_tombstones, ids) is None:
            self._insert(
                backup_tombstones, {**ids, "deleted_at": deleted_at, "reason": reason[:2000]}
            )
        key = (backups.c.database_uid == database_uid) & (backups.c.backup_id == backup_id)
        return self.conn.execute(backups.delete().where(key)).rowcount > 0

    def advance(self, stream: str, position: StreamPosition) -> None:
        """Record that the store holds every event of `stream` up to `position`; a position
        already further is kept (replicas sharing the store each record their own), unless it
        was in another stream of that name."""
        insert = (postgresql if self.conn.dialect.name == "postgresql" else sqlite).insert
        row = {
            "stream": stream,
            "sequence": position.sequence,
            "stream_created": position.stream_created,
            "updated_at": utcnow(),
        }
        statement = insert(stream_positions).values(row)
        excluded = statement.excluded
        self.conn.execute(
            statement.on_conflict_do_update(
                index_elements=[stream_positions.c.stream],
                set_={name: excluded[name] for name in row if name != "stream"},
                where=or_(
                    stream_positions.c.sequence < excluded.sequence,
                    stream_positions.c.stream_created.is_distinct_from(excluded.stream_created),
                ),
            )
        )

    def _insert(self, table: Table, row: dict[str, Any]) -> bool:
        """Insert `row`; False if another writer (a second replica) inserted its key first."""
        if not self._racy:
            self.conn.execute(table.insert(), row)
            return True
        try:
            # A savepoint, so losing that race does not spoil the caller's transaction.
            with self.conn.begin_nested():
                self.conn.execute(table.insert(), row)
        except IntegrityError:
            if self._find(table, row) is not None:
                return False
            raise  # not the race: a broken reference or constraint is a bug to surface
        return True


def _log_conflict(
    database: DatabaseRef, log: LogArchived, known: tuple[Any, Any, Any], row: dict[str, Any]
) -> StoreConflict:
    first, next_, crc32c = known
    return StoreConflict(
        f"{database.uid} {log.lineage.key} thread {log.thread} sequence {log.sequence} "
        f"({log.kind} {name_of(log) or log.object_key}) is known as "
        f"[{first}, {next_}) crc32c {crc32c}, not "
        f"[{row['first']}, {row['next']}) crc32c {row['crc32c']}; keeping the first"
    )


def _log_key(uid: str, log: LogArchived) -> Any:
    return (
        (logs.c.database_uid == uid)
        & (logs.c.lineage == log.lineage.key)
        & (logs.c.thread == log.thread)
        & (logs.c.sequence == log.sequence)
        & (logs.c.kind == log.kind)
        & (logs.c.name == name_of(log))
    )


# -- the store --------------------------------------------------------------------------------


class CatalogStore:
    """The durable index behind one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(
        cls, url: str, *, password_file: Path | None = None, migrate: bool = True
    ) -> CatalogStore:
        """Open the store at `url`, bringing its schema up to date unless `migrate=False`."""
        store = cls(create_catalog_engine(url, password_file=password_file))
        if migrate:
            applied = store.migrate()
            if applied:
                log.info("catalog store migrated to version %d", applied[-1])
        return store

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> list[int]:
        with self.engine.begin() as conn:
            return migrate(conn)

    def version(self) -> int:
        with self.engine.begin() as conn:
            return current_version(conn)

    @contextmanager
    def writing(self) -> Iterator[Writer]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self.engine.begin() as conn:
            yield Writer(conn)

    # Single-fact transactions, as the event handlers use them.

    def record_log(self, database: DatabaseRef, log: LogArchived) -> bool | Recorded:
        with self.writing() as writer:
            return writer.record_log(database, log)

    def forget_log(self, database_uid: str, log: LogArchived) -> bool:
        with self.writing() as writer:
            return writer.forget_log(database_uid, log)

    def delete_log(
        self,
        database_uid: str,
        lineage: str,
        kind: str,
        thread: int,
        sequence: int,
        name: str,
        *,
        object_key: str,
        deleted_at: datetime | None = None,
        reason: str = "deleted",
    ) -> bool:
        with self.writing() as writer:
            return writer.delete_log(
                database_uid,
                lineage,
                kind,
                thread,
                sequence,
                name,
                object_key=object_key,
                deleted_at=deleted_at or utcnow(),
                reason=reason,
            )

    def record_backup(self, database: DatabaseRef, backup: BackupCompleted) -> Recorded:
        with self.writing() as writer:
            return writer.record_backup(database, backup)

    def delete_backup(
        self, database_uid: str, backup_id: str, *, reason: str, deleted_at: datetime | None = None
    ) -> bool:
        with self.writing() as writer:
            return writer.delete_backup(
                database_uid, backup_id, reason=reason, deleted_at=deleted_at or utcnow()
            )

    @contextmanager
    def replacing(self) -> Iterator[Writer]:
        """Empty the store and refill it in one transaction (`catalog rebuild`).

        Readers see the old contents until the block commits; if it raises, nothing changed.
        """
        with self.engine.begin() as conn:
            at = current_version(conn)
            if at > latest():
                # A newer release may keep tables this one does not know to drop.
                raise MigrationError(
                    f"the catalog store is at schema version {at}, this release knows up to "
                    f"{latest()}: rebuild it with the newer release"
                )
            # Deletions are facts the bucket cannot state (the objects are simply gone): keep
            # them, or a late `log.archived` or `backup.completed` would bring one back.
            kept = {
                table: [dict(row._mapping) for row in conn.execute(select(table))]
                for table in (backup_tombstones, log_tombstones)
                if conn.dialect.has_table(conn, table.name)
            }
            metadata.drop_all(conn, checkfirst=True)
            schema_version.drop(conn, checkfirst=True)
            migrate(conn)
            for table, rows in kept.items():
                if rows:
                    conn.execute(table.insert(), rows)
            yield Writer(conn)

    # Reads.

    def counts(self) -> StoreCounts:
        with self.engine.begin() as conn:

            def count(table: Table) -> int:
                return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

            return StoreCounts(
                databases=count(databases),
                lineages=count(lineages),
                logs=count(logs),
                backups=count(backups),
            )

    def position(self, stream: str) -> StreamPosition | None:
        """How far into `stream` the store has applied; None when it never recorded it (a store
        from before version 3, or rebuilt by `catalog rebuild`).

        Read it before `load_into`: what is loaded then holds at least everything up to it,
        also when another replica writes in between."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(stream_positions).where(stream_positions.c.stream == stream)
            ).one_or_none()
        return None if row is None else StreamPosition(row.sequence, row.stream_created)

    def is_empty(self) -> bool:
        """True when the store knows no database (a new store, or one emptied)."""
        with self.engine.begin() as conn:
            return conn.execute(select(databases.c.uid).limit(1)).first() is None

    def load_into(self, index: CatalogIndex, *, batch: int = 5000) -> StoreCounts:
        """Apply every stored database, log and backup to `index` (at start-up)."""
        with self.engine.begin() as conn:
            refs = {
                row.uid: DatabaseRef(
                    uid=row.uid, engine=DbEngine(row.engine), name=row.name, system_id=row.system_id
                )
                for row in conn.execute(select(databases))
            }
            known = {
                (row.database_uid, row.key): lineage_model(row)
                for row in conn.execute(select(lineages))
            }
            # Every lineage it was told of, also one whose logs and backups are all gone since:
            # the running catalog still knows it, so must a restarted one.
            for (uid, _), lineage in sorted(known.items()):
                index.learn_lineage(refs[uid], lineage)
            for row in conn.execute(select(lineage_threads)):
                index.learn_threads(
                    refs[row.database_uid],
                    known[(row.database_uid, row.lineage)],
                    (row.thread,),
                    reported=bool(row.reported),
                )
            for row in conn.execute(select(thread_disables)):
                index.learn_disable(
                    refs[row.database_uid],
                    known[(row.database_uid, row.lineage)],
                    row.thread,
                    row.disabled_at,
                    row.last_sequence,
                    row.disabled_until,
                )
            n_logs = n_backups = 0
            for (uid, key), rows in itertools.groupby(
                self._stored_logs(conn, batch), key=lambda pair: pair[0]
            ):
                stored = (log for _, log in rows)
                taken, conflicts = index.load_logs(refs[uid], known[(uid, key)], stored)
                n_logs += taken
                for exc in conflicts:
                    # Two stored files of one log (a segment and its .partial) that disagree:
                    # the index keeps the first; the store keeps both for a person to see.
                    log.warning("%s: %s", uid, exc)
            for row in conn.execute(select(backups).order_by(backups.c.completed_at)):
                ref = refs[row.database_uid]
                lineage = known[(row.database_uid, row.lineage)]
                index.apply_backup(ref, backup_model(row, lineage, ref.engine))
                n_backups += 1
        return StoreCounts(databases=len(refs), lineages=len(known), logs=n_logs, backups=n_backups)

    @staticmethod
    def _stored_logs(conn: Connection, batch: int) -> Iterator[tuple[tuple[str, str], StoredLog]]:
        """Every stored log as ((database, lineage), `StoredLog`), by database, lineage and
        position.

        Read as the driver's own values, decoded by the columns' `raw_reader`s: a million rows
        through SQLAlchemy's per-column processing (and `StoredLog` built field by field from
        each `Row`) made most of a start-up's minute and a half.
        """
        query = select(logs.c.database_uid, *(logs.c[name] for name in _STORED_LOG_COLUMNS))
        query = query.order_by(logs.c.database_uid, logs.c.lineage, logs.c.first)
        statement = str(query.compile(dialect=conn.dialect))
        position = U64.raw_reader(conn.dialect)
        time = UtcDateTime.raw_reader(conn.dialect)
        result = conn.execution_options(stream_results=True).exec_driver_sql(statement)
        rows = itertools.chain.from_iterable(result.partitions(batch))  # fetchmany, not per row
        for uid, lineage, kind, name, thread, sequence, first, next_, t0, t1, at, *rest in rows:
            archived_at = time(at)
            assert archived_at is not None  # NOT NULL
            # `StoredLog`'s fields, in order; `rest` is the object key, size and crc32c.
            yield (
                (uid, lineage),
                StoredLog(
                    lineage,
                    kind,
                    name or None,
                    thread,
                    sequence,
                    position(first),
                    position(next_),
                    time(t0),
                    time(t1),
                    archived_at,
                    *rest,
                ),
            )

    def lineage(self, database_uid: str, key: str) -> Lineage | None:
        with self.engine.begin() as conn:
            row = conn.execute(
                select(lineages).where(
                    (lineages.c.database_uid == database_uid) & (lineages.c.key == key)
                )
            ).one_or_none()
        return None if row is None else lineage_model(row)
