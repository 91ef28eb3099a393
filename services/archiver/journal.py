"""The archiver's local journal: one row per log, so a SIGKILL at any point resumes exactly.

SQLite in WAL mode with `synchronous=FULL`: a transition is on disk before the step after it
begins (a commit survives a power cut, not only a process crash). The one exception is
`published`, committed without waiting for the disk (`synchronous=NORMAL`: it survives a crash
of the process, and a power cut may undo it, which only makes the restart publish again with
the same id — the row below). Every step is idempotent, so "the journal is one step behind the
world" is always safe to resume from:

| journal says | the world may be                 | on restart                                    |
|--------------|----------------------------------|-----------------------------------------------|
| (no row)     | object stored already            | upload again: an identical re-push is success |
| discovered   | object stored, event published   | upload again (same), publish with the same    |
|              |                                  | deterministic id (JetStream drops the repeat) |
| stored       | event published                  | publish again, same id                        |
| published    | catalog indexed, spool released  | wait for log.indexed; release is idempotent   |

Rows are keyed by object key. Files that are not logs at all (a stray name in the spool) have
no key; they are kept in `problems`, by path, so each is reported once per version of the file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from schemas import utcnow
from services.archiver.sources import Fingerprint, LoggedFile
from services.runtime.phases import IllegalTransition, Transitions


class LogState(StrEnum):
    """Where one log is on its way from the node to the catalog."""

    DISCOVERED = "discovered"
    """Seen complete in its source. Not yet known to be in the object store."""

    STORED = "stored"
    """The object store holds it and its crc32c was verified; `log.archived` not yet confirmed."""

    PUBLISHED = "published"
    """JetStream acknowledged `log.archived`. Waiting for the catalog's `log.indexed`."""

    RELEASED = "released"
    """The catalog holds it; the local copy is given up. Final, unless the same file is pushed
    again (PostgreSQL re-runs archive_command after a crash), which starts a new round."""

    CONFLICT = "conflict"
    """The key holds a different log. Alarm raised; the local copy is kept and never uploaded.
    A person decides; a changed file starts a new round."""

    UNREADABLE = "unreadable"
    """The file could not be read or is not a complete log of this database. Alarm raised; the
    file is kept and examined again when it changes."""


_S = LogState
_TABLE: dict[LogState | None, frozenset[LogState]] = {
    None: frozenset({_S.DISCOVERED, _S.CONFLICT, _S.UNREADABLE}),
    # DISCOVERED → DISCOVERED: the file changed (a re-pushed segment) before it was stored.
    _S.DISCOVERED: frozenset({_S.DISCOVERED, _S.STORED, _S.CONFLICT, _S.UNREADABLE}),
    # STORED → RELEASED: the event went out but the crash came before "published" was written,
    # and the catalog answered before the restart republished.
    _S.STORED: frozenset({_S.PUBLISHED, _S.RELEASED}),
    _S.PUBLISHED: frozenset({_S.RELEASED}),
    _S.RELEASED: frozenset({_S.DISCOVERED}),
    _S.CONFLICT: frozenset({_S.DISCOVERED}),
    # UNREADABLE → UNREADABLE: the file changed and is still no good (reported again).
    _S.UNREADABLE: frozenset({_S.DISCOVERED, _S.UNREADABLE}),
}
"""The only moves a log can make. Anything else is a bug, refused by `Journal._move`."""
TRANSITIONS = Transitions(_TABLE)


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal row."""

    key: str
    database: str
    state: LogState
    log: LoggedFile
    message_id: str
    crc32c: str | None
    size: int | None
    compression: str | None
    stored_crc32c: str | None
    attempts: int
    last_error: str | None
    stored_at: datetime | None
    updated_at: datetime

    @property
    def fingerprint(self) -> Fingerprint:
        return self.log.fingerprint


_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    key            TEXT PRIMARY KEY,
    database       TEXT NOT NULL,
    state          TEXT NOT NULL,
    log            TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    crc32c         TEXT,
    size           INTEGER,
    compression    TEXT,
    stored_crc32c  TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    discovered_at  TEXT NOT NULL,
    stored_at      TEXT,
    published_at   TEXT,
    released_at    TEXT,
    updated_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_state ON logs (database, state);
CREATE TABLE IF NOT EXISTS problems (
    path         TEXT PRIMARY KEY,
    database     TEXT NOT NULL,
    fingerprint  TEXT,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    reported_at  TEXT NOT NULL
);
"""

_COLUMNS = (
    "key, database, state, log, message_id, crc32c, size, compression, stored_crc32c, "
    "attempts, last_error, stored_at, updated_at"
)


class Journal:
    """The journal file. Thread-safe (one lock), so async callers may use `asyncio.to_thread`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; `durable=False` commits without an fsync (see the module docstring)."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    # -- reads --------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM logs WHERE key = ?", (key,)).fetchone()  # noqa: S608
        return _entry(row) if row else None

    def entries(self, database: str | None = None, *states: LogState) -> list[Entry]:
        """Rows of `database` (all if None) in `states` (all if none), oldest sequence first."""
        sql = f"SELECT {_COLUMNS} FROM logs WHERE 1=1"  # noqa: S608
        args: list[str] = []
        if database is not None:
            sql += " AND database = ?"
            args.append(database)
        if states:
            sql += f" AND state IN ({', '.join('?' for _ in states)})"
            args.extend(s.value for s in states)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY key", args).fetchall()
        return [_entry(r) for r in rows]

    # -- transitions --------------------------------------------------------------------------

    def discovered(self, found: list[tuple[str, LoggedFile, str]]) -> list[Entry]:
        """Record (or re-open) logs found complete in their source: (key, log, message id).

        One transaction for a whole discovery pass: one fsync however large the backlog.
        """
        now = utcnow().isoformat()
        with self._tx() as db:
            for key, log, message_id in found:
                _check(key, _state(db, key), LogState.DISCOVERED)
                db.execute(
                    "INSERT INTO logs (key, database, state, log, message_id, discovered_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET state = excluded.state, log = excluded.log, "
                    "message_id = excluded.message_id, attempts = 0, last_error = NULL, "
                    "crc32c = NULL, size = NULL, stored_crc32c = NULL, compression = NULL, "
                    "discovered_at = excluded.discovered_at, stored_at = NULL, "
                    "published_at = NULL, released_at = NULL, updated_at = excluded.updated_at",
                    (
                        key,
                        log.database.uid,
                        LogState.DISCOVERED,
                        log.model_dump_json(),
                        message_id,
                        now,
                        now,
                    ),
                )
        return [self._must(key) for key, _, _ in found]

    def stored(
        self, key: str, *, crc32c: str, size: int, compression: str, stored_crc32c: str
    ) -> Entry:
        return self._move(
            key,
            LogState.STORED,
            crc32c=crc32c,
            size=size,
            compression=compression,
            stored_crc32c=stored_crc32c,
            stored_at=utcnow().isoformat(),
            last_error=None,
        )

    def published(self, key: str) -> Entry:
        # Not worth an fsync: lost to a power cut, it is published again with the same id.
        return self._move(key, LogState.PUBLISHED, durable=False, published_at=utcnow().isoformat())

    def released(self, key: str) -> Entry:
        return self._move(key, LogState.RELEASED, released_at=utcnow().isoformat())

    def rejected(
        self,
        key: str,
        log: LoggedFile,
        state: LogState,
        error: str,
        *,
        message_id: str,
        crc32c: str | None = None,
    ) -> Entry:
        """Record a log that will not be archived as it stands (CONFLICT or UNREADABLE)."""
        if state not in (LogState.CONFLICT, LogState.UNREADABLE):
            raise IllegalTransition(f"{key}: {state} is not a rejection")
        now = utcnow().isoformat()
        with self._tx() as db:
            _check(key, _state(db, key), state)
            db.execute(
                "INSERT INTO logs (key, database, state, log, message_id, crc32c, last_error, "
                "discovered_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET state = excluded.state, log = excluded.log, "
                "crc32c = excluded.crc32c, last_error = excluded.last_error, "
                "updated_at = excluded.updated_at",
                (
                    key,
                    log.database.uid,
                    state,
                    log.model_dump_json(),
                    message_id,
                    crc32c,
                    error,
                    now,
                    now,
                ),
            )
        return self._must(key)

    def failed_attempt(self, key: str, error: str) -> int:
        """Count a failed attempt (state unchanged); returns the attempts so far."""
        with self._tx() as db:
            db.execute(
                "UPDATE logs SET attempts = attempts + 1, last_error = ?, updated_at = ? "
                "WHERE key = ?",
                (error[:2000], utcnow().isoformat(), key),
            )
            row = db.execute("SELECT attempts FROM logs WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _move(
        self, key: str, to: LogState, *, durable: bool = True, **fields: str | int | None
    ) -> Entry:
        with self._tx(durable=durable) as db:
            _check(key, _state(db, key), to)
            assignments = ", ".join(f"{name} = ?" for name in fields)
            db.execute(
                f"UPDATE logs SET state = ?, {assignments}, updated_at = ? WHERE key = ?",  # noqa: S608 - column names are ours
                (to, *fields.values(), utcnow().isoformat(), key),
            )
        return self._must(key)

    def _must(self, key: str) -> Entry:
        entry = self.get(key)
        assert entry is not None, key
        return entry

    def prune_released(self, before: datetime) -> list[str]:
        """Forget logs released before `before`; returns their keys.

        Their files are gone (PostgreSQL) or RMAN's to delete (Oracle); an Oracle log still on
        disk after this is found again, re-pushed (identical: nothing written) and announced
        again, which the catalog's dedupe absorbs. Keeping the journal bounded matters more.
        """
        with self._tx() as db:
            rows = db.execute(
                "SELECT key FROM logs WHERE state = ? AND released_at < ?",
                (LogState.RELEASED, before.isoformat()),
            ).fetchall()
            db.executemany("DELETE FROM logs WHERE key = ?", rows)
        return [str(r[0]) for r in rows]

    # -- files that are not logs --------------------------------------------------------------

    def problem_is_new(
        self, path: Path, database: str, fingerprint: Fingerprint | None, reason: str, detail: str
    ) -> bool:
        """Record a problem file; True if this version of it was not reported before."""
        text = "" if fingerprint is None else ",".join(map(str, fingerprint))
        with self._tx() as db:
            row = db.execute(
                "SELECT fingerprint, detail FROM problems WHERE path = ?", (str(path),)
            ).fetchone()
            if row is not None and row[0] == text and row[1] == detail:
                return False
            db.execute(
                "INSERT OR REPLACE INTO problems VALUES (?, ?, ?, ?, ?, ?)",
                (str(path), database, text, reason, detail, utcnow().isoformat()),
            )
        return True

    def forget_problems(self, database: str, keep: set[Path]) -> None:
        """Drop problems of files that are gone (so a new file of that name is reported)."""
        with self._tx() as db:
            rows = db.execute("SELECT path FROM problems WHERE database = ?", (database,))
            gone = [r[0] for r in rows.fetchall() if Path(r[0]) not in keep]
            db.executemany("DELETE FROM problems WHERE path = ?", [(p,) for p in gone])

    def problem_count(self, database: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM problems WHERE database = ?", (database,)
            ).fetchone()
        return int(row[0])


def _state(db: sqlite3.Connection, key: str) -> LogState | None:
    row = db.execute("SELECT state FROM logs WHERE key = ?", (key,)).fetchone()
    return LogState(row[0]) if row else None


def _check(key: str, current: LogState | None, to: LogState) -> None:
    TRANSITIONS.check(key, current, to)


def _entry(row: tuple[object, ...]) -> Entry:
    (key, database, state, log, message_id, crc, size, compression, stored_crc) = row[:9]
    attempts, last_error, stored_at, updated_at = row[9:]
    return Entry(
        key=str(key),
        database=str(database),
        state=LogState(str(state)),
        log=LoggedFile.model_validate_json(str(log)),
        message_id=str(message_id),
        crc32c=None if crc is None else str(crc),
        size=None if size is None else int(str(size)),
        compression=None if compression is None else str(compression),
        stored_crc32c=None if stored_crc is None else str(stored_crc),
        attempts=int(str(attempts)),
        last_error=None if last_error is None else str(last_error),
        stored_at=None if stored_at is None else datetime.fromisoformat(str(stored_at)),
        updated_at=datetime.fromisoformat(str(updated_at)),
    )
