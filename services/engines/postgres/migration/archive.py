"""The `physical-archive` method: the target restored from Tidemark's archive and rolled forward
from it, so source and target share nothing but the bucket.

    follow_archive         the fetch server the target's `restore_command` asks, for as long
                           as the target is a standby (an async context the executor holds)
    build_from_archive     the source's latest base backup extracted into the target's empty
                           data directory, configured as an archive-fed standby, started
    measure_archive_lag    what the archive (or the source) holds that the target has not
                           replayed
    fence_archived_source  the fence: its final position is one the target can replay past
                           from the archive alone
    unfence_archived_source

`wait_replayed`, `verify_positions` and `promote_target` (cutover.py) serve this method as they
are: the final position has the same meaning (the source's shutdown checkpoint after which no
client committed), and a target fed by `restore_command` reports its replay position the same way.

Why the fence is more than physical-stream's. Only complete segments are archived. With
archiving on, a clean shutdown does switch to a new segment before it writes its checkpoint (so
that the archiver's last round takes every record before it), but the shutdown checkpoint itself
lands at the start of that new segment, which is never complete while the source is down: a target
fed from the archive could never replay through the source's final position. And the archiver's
last round at shutdown is best effort (the server stops whether or not `archive_command` worked).
So the fence runs the source once more after the clean stop, closed to every client, to close the
segment holding the final position and see it archived:

1. `cutover.fence_source`: read-only default, client backends terminated, `pg_ctl stop -m fast`.
   Its shutdown checkpoint is the final position, with the same guarantee as physical-stream:
   a stopped server accepts nothing, and everything acknowledged before lies before it.
2. Start the source with `listen_addresses=''` and its socket in a private directory (0700, the
   cluster's OS user's): no client can reach it, over TCP or its usual socket. The options are
   on the command line, never in a configuration file, so no later start inherits them.
3. `pg_switch_wal()`: the segment holding the final position is complete (what follows the
   checkpoint in it is this private run's own start-up records and the switch: no client commit).
4. Wait until `archive_command` has taken it and everything before it (no `.ready` status up to
   it; its `.done` there, or the segment already recycled, which PostgreSQL does only to archived
   segments): walpush has them durably in the spool, from where Tidemark's archiver uploads them
   whether or not PostgreSQL runs. The target then replays through the final position once the
   upload lands (`wait_replayed` waits for that).
5. Stop cleanly again. This second shutdown checkpoint lands in a segment that is not archived
   until the source writes again; the target does not need it: the final position is the first
   checkpoint, in the archived segment, and nothing after it came from a client.

The private run is started with `-c tidemark.fenced_at=<final position>`, a placeholder setting
nothing reads: PostgreSQL records its command line in `postmaster.opts`, so a rerun of the fence
(the executor restarted anywhere in steps 2-5, or after them) finds the final position there
instead of reading pg_control, which by then holds the second checkpoint. A rerun does again
from step 2 what a fence that died left undone (a rerun after a finished fence starts the source
privately once more: its switch closes a segment of the private run's own records, harmless); a
rerun after the first stop but before the mark finds the first checkpoint still in pg_control.
Any later start of the server rewrites `postmaster.opts`, so an unfenced source forgets the mark.

The feed. `restore_command` is `wal-fetch` on a fetch server inside the executor
(fetchserver.py), which holds the store's client and credentials; for this method it runs for
the migration's whole life, not one restore. The standby asks for the next segment every
`wal_retrieve_retry_interval`; "missing" (not archived yet) is what it retries on. A feed's
socket is new each time it starts, so starting one rewrites the target's `restore_command` and
reloads it (a `SIGHUP` setting since PostgreSQL 14): an executor restart costs the target only
a pause. The fetch server answers on the event loop of the feed: blocking steps that wait on the
target's replay (`wait_replayed`, `promote_target`, starting the target) must run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from schemas import Timeline
from services.blobstore import BlobStore
from services.blobstore.layout import MANIFEST_FILE, database_prefix, log_key
from services.engines.base import EngineError, JobContext
from services.engines.postgres.extract import extract_base, load_manifest, prepare_data_dir
from services.engines.postgres.fetchserver import THREAD, FetchStats, serve_wal
from services.engines.postgres.instance import server_major
from services.engines.postgres.manifest import BaseManifest
from services.engines.postgres.migration.cutover import Fence, fence_source, unfence_source
from services.engines.postgres.migration.instance import (
    MigrationStepError,
    PgInstance,
    clear_dir,
    dir_size,
)
from services.engines.postgres.oscmd import chown_to
from services.engines.postgres.recovery_conf import (
    FetchRig,
    make_fetch_rig,
    write_auto_conf,
    write_owned,
)
from services.engines.postgres.walfile import (
    WalFileKind,
    WalNameError,
    format_lsn,
    parse_lsn,
    parse_name,
    segment_name,
)
from services.engines.settings import HostedDatabase

FENCE_MARK = "tidemark.fenced_at"
"""Placeholder setting on the private run's command line: the final position, for a rerun."""
BUILDING_FILE = "tidemark-migration.building"
"""In the target's data directory while the base backup is laid down: whose half-copy it is."""
RETRY_INTERVAL = "1s"
"""The target's `wal_retrieve_retry_interval`: how soon a newly archived segment is asked for
(the default 5 s would add up to 5 s to the cutover; each retry is a `wal-fetch` and a head())."""

_MARK = re.compile(re.escape(FENCE_MARK) + r"=([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})")
_PRIVATE_PREFIX = "tm-fence-"
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./-]+")
_PRIVATE_SOCKETS = re.compile(r'unix_socket_directories=([^"\s]+)')


def _own_note(migration: str) -> str:
    return f"tidemark migration {migration}: the target's own settings"


def _feed_note(migration: str) -> str:
    return f"tidemark migration {migration}: follow the archive"


def _tag(migration: str) -> str:
    # Short (the fetch socket's path has a 107-byte limit) and the random end of a UUIDv7.
    return re.sub(r"[^a-z0-9]", "", migration.lower())[-8:] or "mig"


def _fail(exc: EngineError) -> MigrationStepError:
    return MigrationStepError(exc.failure.reason, retryable=exc.failure.retryable)


# -- the feed ---------------------------------------------------------------------------------


def standby_fetch(rig: FetchRig, take_ready: bool) -> str:
    """The feed's `restore_command` for a standby, guarded: once the feed is closed (its tool
    and socket removed, an executor stopping), the standby's next ask answers "not there yet"
    (1), which a standby retries, instead of the shell's "not found" (127), which PostgreSQL
    takes as fatal and shuts the standby down. Only a standby may be fed so: it never ends
    recovery on a missing segment (a restore would, at the wrong place)."""
    command = rig.restore_command(take_ready=take_ready)
    return f"[ -x {rig.tool} ] && {{ {command}; }}"


@dataclass(frozen=True)
class ArchiveFeed:
    """A running fetch server for one migration's target, and the `restore_command` that asks it."""

    migration: str
    restore_command: str
    stats: FetchStats

    def attach(self, target: PgInstance) -> None:
        """Point the target's `restore_command` at this feed; reload it if it runs."""
        write_auto_conf(
            target.data_dir,
            {
                "restore_command": self.restore_command,
                "wal_retrieve_retry_interval": RETRY_INTERVAL,
            },
            target.user,
            _feed_note(self.migration),
        )
        if target.is_running():
            target.rows("SELECT pg_reload_conf()")


def _is_ours(target: PgInstance, migration: str) -> bool:
    try:
        text = (target.data_dir / "postgresql.auto.conf").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return f"# {_own_note(migration)}" in text.splitlines()


@contextlib.asynccontextmanager
async def follow_archive(
    target: PgInstance,
    *,
    store: BlobStore,
    prefix: str,
    uid: str,
    migration: str,
    prefetch: int = 4,
) -> AsyncIterator[ArchiveFeed]:
    """Serve the source's archive (`uid` under `prefix`) to the target for the block.

    A target this migration built already is attached to the new feed at once. On exit, a target
    that has been promoted loses its `restore_command` (it names a socket that is going away).
    """
    if not target.data_dir.exists():
        # The fetch server decides once whether it can hand files over by rename(): it looks at
        # the directory the target's pg_wal will be in, so that must exist now.
        target.data_dir.mkdir(mode=0o700, parents=True)
        chown_to(target.data_dir, target.user)
    rig = await make_fetch_rig(target.user, target.data_dir.parent, _tag(migration))
    stats = FetchStats()
    try:
        async with serve_wal(
            store,
            prefix=prefix,
            uid=uid,
            socket_path=rig.socket_path,
            cache_dir=rig.cache_dir,
            prefetch=prefetch,
            user=target.user,
            stats=stats,
            hand_over_to=target.data_dir,
        ) as server:
            feed = ArchiveFeed(migration, standby_fetch(rig, server.hands_over), stats)
            if _is_ours(target, migration) and (target.data_dir / "standby.signal").exists():
                await asyncio.to_thread(feed.attach, target)
            yield feed
            if _is_ours(target, migration) and not (target.data_dir / "standby.signal").exists():
                await asyncio.to_thread(_detach, target, migration)
    finally:
        rig.remove()


def _detach(target: PgInstance, migration: str) -> None:
    write_auto_conf(
        target.data_dir,
        {},
        target.user,
        _feed_note(migration),
        drop={"restore_command", "wal_retrieve_retry_interval"},
    )
    if target.is_running():
        target.rows("SELECT pg_reload_conf()")


# -- the build ---------------------------------------------------------------------------------


async def latest_base_backup(store: BlobStore, prefix: str, db: HostedDatabase) -> BaseManifest:
    """The most recently completed base backup of `db` in the store (of its system, if known)."""
    root = f"{database_prefix(prefix, db.uid)}/backups/"
    found: list[BaseManifest] = []
    async for info in store.list(root):
        if info.key.endswith(f"/{MANIFEST_FILE}"):
            manifest = await load_manifest(store, info.key)
            if db.system_id is None or manifest.postgres.system_id == db.system_id:
                found.append(manifest)
    if not found:
        raise MigrationStepError(f"no base backup of {db.uid} under {root}: take one first")
    return max(found, key=lambda m: (m.backup.completed_at, m.backup.consistent_at.value))


def _own_settings(target: PgInstance, major: int) -> dict[str, str]:
    settings = {
        "port": str(target.port),
        "unix_socket_directories": str(target.socket_dir),
        # The copy carries the source's archiving: the target must never archive into its
        # source's prefix. archive_mode stays, so archiving the new primary needs no restart.
        "archive_command": "",
        "primary_conninfo": "",  # fed by the archive only
        "hot_standby": "on",  # the steps read its replay position over SQL
    }
    if major >= 15:
        settings["archive_library"] = ""
    return settings


async def build_from_archive(
    db: HostedDatabase,
    target: PgInstance,
    feed: ArchiveFeed,
    *,
    store: BlobStore,
    prefix: str,
    ctx: JobContext,
) -> int:
    """Restore `db`'s latest base backup into the target's data directory as a standby that
    rolls forward from the archive through `feed`, and start it. Returns the bytes laid down.

    Rerunnable: a target this migration built is attached to `feed` and started (0 bytes); a copy
    this migration left half-done (its mark is in the directory) is cleared and made again. Any
    other non-empty directory is refused and left as it is.
    """
    data_dir = target.data_dir
    if _is_ours(target, feed.migration) and not (data_dir / BUILDING_FILE).exists():
        if (data_dir / "standby.signal").exists():  # not promoted yet: it follows this feed
            await asyncio.to_thread(feed.attach, target)
        await asyncio.to_thread(target.start)
        return 0
    building = data_dir / BUILDING_FILE
    if building.exists() and building.read_text(encoding="utf-8") == feed.migration:
        await asyncio.to_thread(clear_dir, data_dir)
    elif data_dir.exists() and any(data_dir.iterdir()):
        raise MigrationStepError(
            f"{data_dir} is not empty and is not this migration's target; refusing to overwrite it"
        )
    try:
        manifest = await latest_base_backup(store, prefix, db)
        major = await server_major(target.bindir, target.user)
        if manifest.postgres.pg_version // 10000 != major:
            raise MigrationStepError(
                f"the base backup is from PostgreSQL {manifest.postgres.pg_version // 10000}, the "
                f"target's binaries ({target.bindir}) are {major}"
            )
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        chown_to(data_dir, target.user)
        write_owned(building, feed.migration, target.user)
        backup = manifest.backup
        await ctx.progress(
            "copy",
            message=f"restoring base backup {backup.backup_id} (consistent at "
            f"{backup.consistent_at}) into {data_dir}",
        )
        await extract_base(store, manifest, data_dir, target.user, ctx)
    except EngineError as exc:
        raise _fail(exc) from exc
    await ctx.progress("configure", message="a standby fed by the archive")
    await asyncio.to_thread(prepare_data_dir, data_dir, target.user)
    write_auto_conf(data_dir, _own_settings(target, major), target.user, _own_note(feed.migration))
    feed.attach(target)
    write_owned(data_dir / "standby.signal", "", target.user)
    building.unlink()  # from here on the directory is recognised as ours by its settings
    size = await asyncio.to_thread(dir_size, data_dir)
    await ctx.progress("start", message=f"starting the target on port {target.port}")
    # pg_ctl -w returns once the standby is consistent: that takes WAL the feed serves.
    await asyncio.to_thread(target.start)
    return size


# -- lag ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveLag:
    """How far the target is behind the archive and, when it answers, the source.

    `archived_lsn` is the end of the run of archived segments that starts with the one the
    target is replaying: what it can replay without anything more being archived.
    `archive_bytes` is that minus the replay position: what the target has still to catch up by
    itself. `bytes` is the source's current WAL position (the archive's end when the source does
    not answer) minus the replay position: it includes the source's unfinished segment, which
    reaches the archive only when it is complete (`archive_timeout` bounds how long that takes).
    `seconds` is the age of the target's last replayed commit when bytes remain, else zero.
    """

    source_lsn: int | None
    archived_lsn: int
    replayed_lsn: int
    bytes: int
    archive_bytes: int
    seconds: float

    def __str__(self) -> str:
        source = format_lsn(self.source_lsn) if self.source_lsn is not None else "not answering"
        return (
            f"source {source}, archived to {format_lsn(self.archived_lsn)}, replayed "
            f"{format_lsn(self.replayed_lsn)}: {self.bytes} bytes ({self.archive_bytes} archived), "
            f"{self.seconds:.3f} s"
        )


async def archived_end(
    store: BlobStore, prefix: str, uid: str, timeline: int, from_lsn: int, segment_size: int
) -> int:
    """The end of the contiguous run of archived segments from the one holding `from_lsn`
    (`from_lsn` itself when that one is not archived). One listing per 4 GiB of WAL."""
    number = from_lsn // segment_size
    lineage = Timeline(id=timeline)
    while True:
        name = segment_name(timeline, number, segment_size)
        listed: set[int] = set()
        async for info in store.list(log_key(prefix, uid, lineage, THREAD, name[:16])):
            with contextlib.suppress(WalNameError):
                parsed = parse_name(info.key.rpartition("/")[2])
                if parsed.kind is WalFileKind.SEGMENT:
                    listed.add(parsed.segment_number(segment_size))
        start = number
        while number in listed:
            number += 1
        if number == start or segment_name(timeline, number, segment_size)[:16] == name[:16]:
            break  # a gap, or the end of the archive, inside this listing
    return max(from_lsn, number * segment_size)


async def measure_archive_lag(
    target: PgInstance,
    *,
    store: BlobStore,
    prefix: str,
    uid: str,
    source: PgInstance | None = None,
) -> ArchiveLag:
    # The target first, then the archive, then the source: each can only have moved on since,
    # so the lag read is never less than the truth (a gate may wait longer, never open early).
    row = (
        await asyncio.to_thread(
            target.rows,
            "SELECT coalesce(pg_last_wal_replay_lsn(), c.redo_lsn), c.timeline_id, "
            "(SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), "
            "coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) "
            "FROM pg_control_checkpoint() c",
        )
    )[0]
    replayed, timeline, segment_size = parse_lsn(row[0]), int(row[1]), int(row[2])
    age = float(row[3])
    archived = await archived_end(store, prefix, uid, timeline, replayed, segment_size)
    current: int | None = None
    if source is not None:
        with contextlib.suppress(MigrationStepError):  # fenced, stopped, unreachable
            head = await asyncio.to_thread(source.value, "SELECT pg_current_wal_lsn()")
            current = parse_lsn(head)
    behind = max(0, max(archived, current or 0) - replayed)
    return ArchiveLag(
        source_lsn=current,
        archived_lsn=archived,
        replayed_lsn=replayed,
        bytes=behind,
        archive_bytes=archived - replayed,
        seconds=max(0.0, age) if behind else 0.0,
    )


# -- the fence ---------------------------------------------------------------------------------


def _fence_mark(source: PgInstance) -> int | None:
    """The final position a fence left on the command line of the server's last start."""
    try:
        opts = (source.data_dir / "postmaster.opts").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    found = _MARK.search(opts)
    return parse_lsn(found[1]) if found else None


def _running_socket_dir(source: PgInstance) -> Path | None:
    """The first socket directory of the running server (postmaster.pid, line 5)."""
    try:
        lines = (source.data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    return Path(lines[4]) if len(lines) > 4 and lines[4] else None


def _forget_private_dir(source: PgInstance) -> None:
    """Remove the private socket directory of a fence's run that died before removing it (the
    stopped server's `postmaster.opts` names it)."""
    try:
        opts = (source.data_dir / "postmaster.opts").read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for found in _PRIVATE_SOCKETS.findall(opts):
        if _is_private_dir(Path(found)):
            shutil.rmtree(found, ignore_errors=True)


def _is_private_dir(path: Path | None) -> bool:
    return (
        path is not None
        and path.parent == Path(tempfile.gettempdir())
        and path.name.startswith(_PRIVATE_PREFIX)
    )


def _start_privately(source: PgInstance, final_lsn: int) -> PgInstance:
    """Start the stopped source where no client can reach it (see the module docstring, 2)."""
    directory = Path(tempfile.mkdtemp(prefix=_PRIVATE_PREFIX))
    if not _SHELL_SAFE.fullmatch(str(directory)):
        # pg_ctl hands -o to a shell; a TMPDIR with quotes or spaces must not reach it.
        directory.rmdir()
        raise MigrationStepError(f"{directory} is not a path pg_ctl -o can carry")
    directory.chmod(0o700)
    chown_to(directory, source.user)
    options = (
        f"-c listen_addresses='' -c unix_socket_directories='{directory}' "
        f"-c {FENCE_MARK}={format_lsn(final_lsn)}"
    )
    log = source.data_dir.parent / f"{source.data_dir.name}.log"
    try:
        source.pg_ctl("-l", str(log), "-o", options, "start")
    except MigrationStepError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return replace(source, socket_dir=directory)


_ARCHIVED_SQL = (
    # A history file sorts before its timeline's segments: it is waited for too, as it should be.
    "SELECT NOT EXISTS (SELECT 1 FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready' "
    "AND left(name, 24) <= :'segment') "
    "AND ((pg_stat_file('pg_wal/archive_status/' || :'segment' || '.done', true)).size "
    "IS NOT NULL OR (pg_stat_file('pg_wal/' || :'segment', true)).size IS NULL)"
)


def _wait_archived(private: PgInstance, segment: str, *, timeout: float) -> None:
    """Until `archive_command` has taken `segment` and every file before it."""
    deadline = time.monotonic() + timeout
    while private.value(_ARCHIVED_SQL, {"segment": segment}) != "t":
        if time.monotonic() > deadline:
            failed = private.rows(
                "SELECT failed_count, coalesce(last_failed_wal, ''), "
                "coalesce(last_failed_time::text, '') FROM pg_stat_archiver"
            )[0]
            raise MigrationStepError(
                f"{segment} not archived in {timeout:g} s (archiver failures: {failed[0]}, "
                f"last {failed[1] or 'none'} at {failed[2] or '-'})",
                retryable=True,
            )
        time.sleep(0.05)


def fence_archived_source(
    source: PgInstance, *, archive_timeout: float = 120.0, stop_timeout: float = 120.0
) -> Fence:
    """Raise the fence (see the module docstring) and return the source's final position: its
    shutdown checkpoint, in a segment the archive holds once this returns.

    Rerunnable, from any point: a fence already past its first stop keeps its final position.
    """
    final_lsn = _fence_mark(source)
    if final_lsn is None:
        fence = fence_source(source, stop_timeout=stop_timeout)
    else:
        fence = Fence(final_lsn, time.monotonic(), 0)
    running = _running_socket_dir(source) if source.is_running() else None
    if running is not None and _is_private_dir(running):
        private = replace(source, socket_dir=running)
    elif running is None:
        _forget_private_dir(source)
        private = _start_privately(source, fence.final_lsn)
    else:
        raise MigrationStepError(
            f"the source runs on {running} after its fence began: started outside the saga",
            retryable=False,
        )
    # The segment holding the byte before the switch's end: the one just closed, which holds
    # the final position (or, if nothing followed the checkpoint, the one it completed).
    segment = private.value("SELECT pg_walfile_name(pg_switch_wal())")
    _wait_archived(private, segment, timeout=archive_timeout)
    private.pg_ctl("stop", "-m", "fast", timeout=stop_timeout)
    shutil.rmtree(private.socket_dir, ignore_errors=True)
    return fence


def unfence_archived_source(source: PgInstance) -> None:
    """Abort before the point of no return: the source serves writes again, as before (what
    becomes of the target is the caller's: the executor's step stops it and closes its feed).
    Rerunnable."""
    running = _running_socket_dir(source) if source.is_running() else None
    if _is_private_dir(running):
        assert running is not None
        replace(source, socket_dir=running).pg_ctl("stop", "-m", "fast")
    if not source.is_running():
        _forget_private_dir(source)
    unfence_source(source)


__all__ = [
    "ArchiveFeed",
    "ArchiveLag",
    "archived_end",
    "build_from_archive",
    "fence_archived_source",
    "follow_archive",
    "latest_base_backup",
    "measure_archive_lag",
    "unfence_archived_source",
]
