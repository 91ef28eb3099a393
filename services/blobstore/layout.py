"""Where Tidemark's objects live in the store: the one definition of the key layout.

    <prefix>/<database-uid>/owner.json                          who owns this prefix (owner.py)
    <prefix>/<database-uid>/<lineage>/logs/<thread>/<name>      WAL segments: the file name
    <prefix>/<database-uid>/<lineage>/logs/<thread>/<sequence>  Oracle redo: zero-padded to 10
    <prefix>/<database-uid>/<lineage>/history/<name>            timeline and backup history files
    <prefix>/<database-uid>/backups/<backup-id>/manifest.json   a backup, written last
    <prefix>/<database-uid>/backups/<backup-id>/...             its pieces (the engine's own names)

`<lineage>` is `tl-XXXXXXXX` (PostgreSQL timeline, hex as in WAL names) or `inc-<resetlogs id>`
(Oracle incarnation). Padding keeps a thread's logs in sequence order in a listing, which is how
`catalog rebuild` walks them. A prefix of "" puts databases at the bucket's root.

The archiver writes logs under these keys, the engines write backups and read both back for a
restore, and the catalog's rebuild walks them: every one of them builds a key here, so a writer
and a reader can never disagree about where an object is. Every function is a pure function of
the object's identity, so every retry, restart and node computes the same key (create-only
writes rely on that).
"""

from __future__ import annotations

from schemas import Incarnation, Lineage, Timeline

#: Oracle sequences are padded to this width (2^32 has 10 digits) so listings sort numerically.
SEQUENCE_WIDTH = 10

OWNER_FILE = "owner.json"
MANIFEST_FILE = "manifest.json"


def database_prefix(prefix: str, uid: str) -> str:
    """Everything of database `uid`, without the trailing `/`."""
    return f"{prefix}/{uid}" if prefix else uid


def owner_key(prefix: str, uid: str) -> str:
    return f"{database_prefix(prefix, uid)}/{OWNER_FILE}"


def lineage_key(lineage: Lineage) -> str:
    if isinstance(lineage, Timeline | Incarnation):
        return lineage.key
    raise TypeError(f"not a lineage: {lineage!r}")


def lineage_prefix(prefix: str, uid: str, lineage: Lineage) -> str:
    """One lineage's logs and history files, without the trailing `/`."""
    return f"{database_prefix(prefix, uid)}/{lineage_key(lineage)}"


def log_key(prefix: str, uid: str, lineage: Lineage, thread: int, name: str) -> str:
    """A log stored under its file name (a PostgreSQL WAL segment)."""
    return f"{lineage_prefix(prefix, uid, lineage)}/logs/{thread}/{name}"


def sequence_key(prefix: str, uid: str, lineage: Lineage, thread: int, sequence: int) -> str:
    """A log stored under its sequence number (Oracle redo)."""
    return log_key(prefix, uid, lineage, thread, f"{sequence:0{SEQUENCE_WIDTH}d}")


def history_key(prefix: str, uid: str, lineage: Lineage, name: str) -> str:
    """A timeline or backup history file of `lineage`."""
    return f"{lineage_prefix(prefix, uid, lineage)}/history/{name}"


def backup_prefix(prefix: str, uid: str, backup_id: str) -> str:
    """Everything of one backup, with the trailing `/` (its pieces go right after)."""
    return f"{database_prefix(prefix, uid)}/backups/{backup_id}/"


def manifest_key(prefix: str, uid: str, backup_id: str) -> str:
    return backup_prefix(prefix, uid, backup_id) + MANIFEST_FILE
