"""Version 3: how far into each stream the store has applied.

- `stream_positions`: per stream (`TM_EVT`), the sequence up to which every event the catalog
  consumes is in the store, and the stream's creation time when it was recorded (a stream
  deleted and made again restarts its sequences at 1: a position in the old one says nothing
  about the new one). A catalog starting on a store replays the stream from the next sequence,
  or rebuilds from the bucket when the stream no longer holds it. No row: unknown (a store
  from before this version, or rebuilt by hand), so the catalog replays what the stream holds.

Frozen: this is the schema as version 3 created it. Later changes are new migrations.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, String, Table
from sqlalchemy.engine import Connection

from services.catalog.columns import UtcDateTime

_meta = MetaData()

_positions = Table(
    "stream_positions",
    _meta,
    Column("stream", String(32), primary_key=True),
    Column("sequence", BigInteger, nullable=False),
    Column("stream_created", UtcDateTime()),
    Column("updated_at", UtcDateTime(), nullable=False),
)


def apply(conn: Connection) -> None:
    _meta.create_all(conn, tables=[_positions])
