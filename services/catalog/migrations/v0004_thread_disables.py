"""Version 4: the stretches on which a lineage's redo threads were disabled.

- `thread_disables` (database, lineage, thread, disabled_at): a thread disabled at
  `disabled_at` (Oracle: ALTER DATABASE DISABLE THREAD, V$THREAD DISABLE_CHANGE#) after its log
  `last_sequence`, with no redo up to `disabled_until` (where it was enabled again, or how far
  the archiver last saw it still disabled). Recovery past the disable needs none of its redo
  there. Empty at first: stores from before this version never heard of a disable, and a
  thread they know stays required everywhere (an understatement, never an overstatement).

Frozen: this is the schema as version 4 created it. Later changes are new migrations.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.engine import Connection

from services.catalog.columns import U64

_meta = MetaData()

# Version 1's table, only as far as the new foreign key refers to it (it is not created here).
Table(
    "lineages",
    _meta,
    Column("database_uid", String(63), primary_key=True),
    Column("key", String(16), primary_key=True),
)
_disables = Table(
    "thread_disables",
    _meta,
    Column("database_uid", String(63), primary_key=True),
    Column("lineage", String(16), primary_key=True),
    Column("thread", Integer, primary_key=True, autoincrement=False),
    Column("disabled_at", U64(), primary_key=True, autoincrement=False),
    Column("last_sequence", BigInteger, nullable=False),
    Column("disabled_until", U64(), nullable=False),
    ForeignKeyConstraint(["database_uid", "lineage"], ["lineages.database_uid", "lineages.key"]),
)


def apply(conn: Connection) -> None:
    _meta.create_all(conn, tables=[_disables])
