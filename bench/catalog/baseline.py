"""Ingest's baseline: the same log rows into the same table with a bare `executemany`.

What ingest would cost if it were nothing but the insert: Python's `sqlite3`, the store's own
schema (migrated by `CatalogStore.open`), the store's pragmas (WAL, `synchronous=FULL`, foreign
keys), and one commit per batch of the catalog's batch size, so both make the same number of
durable commits. The rows are exactly those the store writes (`rows.log_row`, passed through
the columns' own bind processing: biased positions, times as SQLite keeps them), and a sample is
read back through the store to prove it. Only `executemany` and the commits are timed.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from bench.catalog.workload import DATABASE, INCARNATION
from schemas.messages import LogArchived
from services.catalog.rows import log_model, log_row
from services.catalog.settings import sqlite_url
from services.catalog.store import CatalogStore
from services.catalog.tables import logs

_DIALECT = create_engine("sqlite://").dialect
_PROCESSORS = [column.type.bind_processor(_DIALECT) for column in logs.columns]
_INSERT = str(logs.insert().compile(dialect=_DIALECT))  # positional: "... VALUES (?, ?, ...)"


def stored_row(log: LogArchived) -> tuple[Any, ...]:
    """The log's row as the store binds it for SQLite."""
    row = log_row(DATABASE.uid, log)
    return tuple(
        value if process is None else process(value)
        for process, value in zip(_PROCESSORS, (row[c.name] for c in logs.columns), strict=True)
    )


def executemany_rate(
    rows: list[tuple[Any, ...]], path: Path, batch: int, sample: LogArchived
) -> float:
    """Rows per second, inserted `batch` at a time, one commit each; `sample` is one of them."""
    store = CatalogStore.open(sqlite_url(path))
    try:
        with store.writing() as writer:  # the rows' database and lineage, untimed
            writer.record_database(DATABASE)
            writer.record_lineage(DATABASE.uid, INCARNATION)
    finally:
        store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows[i : i + batch])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    _check_sample(path, sample)
    return len(rows) / elapsed


def _check_sample(path: Path, sample: LogArchived) -> None:
    """A bare row read back through the store's columns is the log it was made from."""
    store = CatalogStore.open(sqlite_url(path))
    try:
        with store.engine.begin() as conn:
            row = conn.execute(
                select(logs).where(
                    (logs.c.thread == sample.thread) & (logs.c.sequence == sample.sequence)
                )
            ).one()
    finally:
        store.close()
    if log_model(row, sample.lineage, DATABASE.engine) != sample:
        raise RuntimeError("the baseline's rows do not read back as the logs they came from")
