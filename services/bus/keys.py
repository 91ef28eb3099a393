"""Listing a KV bucket's live keys, exactly.

nats-py's `KeyValue.keys()` (and a `watch()` read until its first `None`) can end the initial
replay early: the watcher decides "caught up" from the consumer's pending count before the
messages already buffered on its subscription are counted, and then reports no keys, or some of
them, while the bucket holds more (nats-io/nats.py#842). For a heartbeat bucket that reads as "no
node hosts this database"; for the plans bucket, as "no saga to resume". So keys are listed here
from the server's own record of the stream's subjects (`STREAM.INFO` with a subjects filter),
and each is read back to drop delete and purge markers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue


@dataclass(frozen=True)
class Listing:
    """A bucket's live entries under a prefix, and the stream sequence the listing is as of:
    a key absent here was absent (or deleted) at `as_of`; one written later may be missing."""

    entries: list[KeyValue.Entry]
    as_of: int


async def list_entries(kv: KeyValue, prefix: str = "") -> Listing:
    """The latest entry of every key of `kv` under `prefix` that holds a value, by key, with
    the stream sequence of the listing. `prefix` is a plain string prefix ending at a token
    boundary (`"backup."`), or empty for the whole bucket."""
    raw = cast(Any, kv)  # nats-py keeps the stream's name and subject prefix private
    stream: str = raw._stream
    subject_prefix: str = raw._pre  # "$KV.<bucket>."
    info = await raw._js.stream_info(stream, subjects_filter=f"{subject_prefix}{prefix}>")
    subjects = info.state.subjects or {}
    entries = []
    for subject in sorted(subjects):
        try:
            entry = await kv.get(subject[len(subject_prefix) :])
        except (KeyDeletedError, KeyNotFoundError):
            continue  # a delete or purge marker, or gone since the listing
        if entry.value is not None:
            entries.append(entry)
    return Listing(entries, int(info.state.last_seq))


async def live_entries(kv: KeyValue, prefix: str = "") -> list[KeyValue.Entry]:
    """The latest entry of every key of `kv` under `prefix` that holds a value, by key."""
    return (await list_entries(kv, prefix)).entries


async def live_keys(kv: KeyValue, prefix: str = "") -> list[str]:
    """Every key of `kv` under `prefix` whose latest entry is a value, sorted."""
    return [entry.key for entry in await live_entries(kv, prefix)]
