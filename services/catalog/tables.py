"""The catalog store's current model, as SQLAlchemy Core tables.

`migrations/` creates these tables (each migration frozen at its version); a test checks that
migrating an empty store ends exactly here. Positions use `columns.U64`, times `UtcDateTime`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

from services.catalog.columns import U64, UtcDateTime

metadata = MetaData()

databases = Table(
    "databases",
    metadata,
    Column("uid", String(63), primary_key=True),
    Column("engine", String(16), nullable=False),
    Column("name", String(63), nullable=False),
    Column("system_id", U64()),
)

lineages = Table(
    "lineages",
    metadata,
    Column("database_uid", String(63), primary_key=True),
    Column("key", String(16), primary_key=True),
    Column("kind", String(16), nullable=False),  # timeline | incarnation
    Column("ident", BigInteger, nullable=False),  # timeline id | resetlogs id
    Column("parent", String(16)),  # the parent lineage's key
    Column("branch_at", U64()),  # branch LSN | resetlogs SCN: where it leaves the parent
    Column("number", Integer),  # Oracle INCARNATION#
    ForeignKeyConstraint(["database_uid"], ["databases.uid"]),
)

logs = Table(
    "logs",
    metadata,
    Column("database_uid", String(63), primary_key=True),
    Column("lineage", String(16), primary_key=True),
    Column("thread", Integer, primary_key=True),
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), primary_key=True),
    # The PostgreSQL file name ("" for redo): a segment and its `.partial`, or two backup
    # history files of one timeline, share thread and sequence but are different logs.
    Column("name", String(64), primary_key=True),
    Column("first", U64()),
    Column("next", U64()),
    Column("first_time", UtcDateTime()),
    Column("next_time", UtcDateTime()),
    Column("archived_at", UtcDateTime(), nullable=False),
    Column("stored_at", UtcDateTime(), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("crc32c", String(8), nullable=False),
    Column("compression", String(8), nullable=False),
    Column("object_key", String(1024), nullable=False),
    Column("node", String(253)),  # NULL when rebuilt from the bucket
    ForeignKeyConstraint(["database_uid", "lineage"], ["lineages.database_uid", "lineages.key"]),
    Index("logs_by_object_key", "database_uid", "object_key"),
)

backups = Table(
    "backups",
    metadata,
    Column("database_uid", String(63), primary_key=True),
    Column("backup_id", String(64), primary_key=True),
    Column("lineage", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("cumulative", Boolean, nullable=False),
    Column("tag", String(30)),
    Column("compression", String(8), nullable=False),
    Column("parent_backup_id", String(64)),
    Column("job_id", String(36), nullable=False),
    Column("start", U64(), nullable=False),
    Column("consistent_at", U64(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("completed_at", UtcDateTime(), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("piece_count", Integer, nullable=False),
    Column("manifest_key", String(1024), nullable=False),
    ForeignKeyConstraint(["database_uid", "lineage"], ["lineages.database_uid", "lineages.key"]),
)

backup_tombstones = Table(
    "backup_tombstones",
    metadata,
    Column("database_uid", String(63), primary_key=True),
    Column("backup_id", String(64), primary_key=True),
    Column("deleted_at", UtcDateTime(), nullable=False),
    Column("reason", String(2000), nullable=False),
)

lineage_threads = Table(
    "lineage_threads",
    metadata,
    Column("database_uid", String(63), primary_key=True),
    Column("lineage", String(16), primary_key=True),
    Column("thread", Integer, primary_key=True, autoincrement=False),
    # True: the archiver reported it enabled (`log.archived.enabled_threads`); False: only
    # seen on a log. A lineage with no reported thread also needs its parent's threads.
    Column("reported", Boolean, nullable=False),
    ForeignKeyConstraint(["database_uid", "lineage"], ["lineages.database_uid", "lineages.key"]),
)

thread_disables = Table(
    "thread_disables",
    metadata,
    Column("database_uid", String(63), primary_key=True),
    Column("lineage", String(16), primary_key=True),
    Column("thread", Integer, primary_key=True, autoincrement=False),
    # A stretch the thread has no redo on (`log.archived.disabled_threads`): from where it was
    # disabled to `disabled_until`, after its log `last_sequence`. Reports of one disable
    # (thread, disabled_at) only ever extend it: the highest `disabled_until` and sequence.
    Column("disabled_at", U64(), primary_key=True, autoincrement=False),
    Column("last_sequence", BigInteger, nullable=False),
    Column("disabled_until", U64(), nullable=False),
    ForeignKeyConstraint(["database_uid", "lineage"], ["lineages.database_uid", "lineages.key"]),
)

log_tombstones = Table(
    "log_tombstones",
    metadata,
    Column("database_uid", String(63), primary_key=True),
    Column("lineage", String(16), primary_key=True),
    Column("thread", Integer, primary_key=True, autoincrement=False),
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("object_key", String(1024), nullable=False),
    # The latest deletion; an object stored at or before it is a deleted one.
    Column("deleted_at", UtcDateTime(), nullable=False),
    # The object deleted last, when the catalog held it: an identical `log.archived` is it.
    Column("stored_at", UtcDateTime()),
    Column("crc32c", String(8)),
    Column("reason", String(2000), nullable=False),
)

stream_positions = Table(
    "stream_positions",
    metadata,
    Column("stream", String(32), primary_key=True),
    # Every event of the stream the catalog consumes, up to this sequence, is in the store.
    Column("sequence", BigInteger, nullable=False),
    # The stream's creation time: a stream made again restarts at 1 (`v0003`).
    Column("stream_created", UtcDateTime()),
    Column("updated_at", UtcDateTime(), nullable=False),
)
