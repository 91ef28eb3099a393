"""Restore a PostgreSQL base backup and recover it from the archive to a target.

Phases, each reported through ``ctx.progress``:

``prepare``
    Check the backup fits this node (server major version, system identifier). In place: stop the
    cluster (``pg_ctl stop -m fast``) and move its data directory aside to
    ``<data_dir>.tidemark-old-<restore8>``. Clone: the target directory must be new or empty.
``download``
    Stream the tar parts in order from the store (each verified against its crc32c, zstd frames
    decoded) into ``tarfile``, which extracts them with the ``data`` filter (no absolute paths,
    no ``..``, no links leaving the directory, no devices). Nothing is staged whole on disk.
``configure``
    Give every file to the database's OS user, data directory 0700, no stale ``postmaster.pid``;
    write ``recovery.signal`` and the settings (``postgresql.auto.conf``, read last, so it wins
    over ``postgresql.conf`` and its includes): ``restore_command`` = ``wal-fetch`` on this
    restore's fetch server, the recovery target, and for a clone its own ``port`` and socket
    directory with archiving off — a clone must never archive into its source's prefix.
``recover``
    Start the server and follow ``pg_last_wal_replay_lsn()`` until ``pg_is_in_recovery()`` is
    false. A server that exits instead fails the restore with its own FATAL line, e.g. "recovery
    ended before configured recovery target was reached".
``finish``
    Read the new timeline from the current WAL segment's name and its branch point from
    the new timeline's history file — the exact LSN where recovery ended, which is what the
    restore reached — with ``pg_last_xact_replay_timestamp()`` as the time reached (it stays at
    the last replayed commit after promotion). The recovery settings are then removed from
    ``postgresql.auto.conf`` (they name a socket that is about to disappear) and the server
    reloaded.

In place, on any failure the new data directory is removed, the old one put back and, if it was
running, started again — a failed restore leaves the database as it found it. On success the old
directory stays aside, never deleted by the restore: it is the only copy of whatever the restore
abandoned (a wrong target is a mistake found only later). `tidemark leftovers` lists such
directories and removes them when told (they hold a second copy of the database's volume).

``verify.py`` reuses the pieces (:func:`load_manifest`, :func:`extract_base`,
:class:`Instance`...).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import queue
import re
import shlex
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from schemas import Lsn, Timeline
from schemas.messages import RestoreResult, RunRestore
from schemas.messages.restores import (
    RestoreMode,
    TargetImmediate,
    TargetName,
    TargetPosition,
    TargetTime,
    TargetXid,
)
from services.blobstore import (
    BlobStore,
    BlobStoreError,
    IntegrityError,
    ObjectNotFound,
    RetryableBlobError,
)
from services.engines.base import EngineError, JobContext
from services.engines.postgres import walfetch
from services.engines.postgres.fetchserver import FetchStats, _Decoder, serve_wal
from services.engines.postgres.manifest import BaseManifest
from services.engines.postgres.oscmd import (
    OsCommandError,
    OsUser,
    chown_to,
    database_os_user,
    install_user_tool,
    pg_bindir,
    run_as,
    user_env,
)
from services.engines.postgres.walfile import format_lsn, parse_lsn
from services.executor.settings import ExecutorSettings, HostedDatabase, PostgresInstance

__all__ = [
    "Instance",
    "RecoveryOutcome",
    "extract_base",
    "load_manifest",
    "recovery_settings",
    "restore",
]

log = logging.getLogger(__name__)

WALFETCH_TOOL = "wal-fetch"
POLL_S = 0.2
START_GRACE_S = 30.0
"""How long a just-started server may take to write ``postmaster.pid``."""
PIPE_DEPTH = 16
"""Decoded chunks queued between the download and the extracting thread."""

RECOVERY_SETTINGS = frozenset(
    {
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_time",
        "recovery_target_xid",
        "recovery_target_name",
        "recovery_target_inclusive",
        "recovery_target_timeline",
        "recovery_target_action",
    }
)
"""What a restore plan may set: a command must not be a way to set ``archive_command``."""
TARGET_SETTINGS = frozenset(
    {
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_time",
        "recovery_target_xid",
        "recovery_target_name",
    }
)
CLONE_OVERRIDES = ("port", "unix_socket_directories", "archive_mode", "archive_command")


def _fail(reason: str, *, retryable: bool = False, code: str | None = None) -> EngineError:
    return EngineError.of(reason[:2000], retryable=retryable, code=code)


# -- the instance being restored ------------------------------------------------------------------


@dataclass
class Instance:
    """A cluster this module starts, stops and queries, as its OS user."""

    data_dir: Path
    port: int
    socket_dir: Path
    user: OsUser
    bindir: Path
    dbname: str = "postgres"
    password_file: Path | None = None
    log_file: Path | None = None
    pid: int | None = None

    @classmethod
    def of(cls, pg: PostgresInstance) -> Instance:
        try:
            user = database_os_user(pg.os_user)
            bindir = pg.bin_dir if pg.bin_dir is not None else pg_bindir()
        except OsCommandError as exc:
            raise _fail(str(exc)) from exc
        return cls(
            data_dir=pg.data_dir,
            port=pg.port,
            socket_dir=pg.socket_dir,
            user=user,
            bindir=bindir,
            dbname=pg.dbname,
            password_file=pg.password_file,
        )

    def _env(self) -> dict[str, str]:
        extra: dict[str, str] = {}
        if self.password_file is not None:
            # A reference, in libpq's own .pgpass format (as the backup reads it): the password
            # itself never enters an environment that pg_ctl would hand on to the server.
            extra["PGPASSFILE"] = os.fspath(self.password_file)
        debug = os.environ.get(walfetch.DEBUG_ENV)
        if debug:  # the server's restore_command inherits it: wal-fetch's timings in its log
            extra[walfetch.DEBUG_ENV] = debug
        return user_env(self.user, extra)

    async def run(self, *argv: str | os.PathLike[str], timeout: float = 120.0) -> tuple[int, str]:
        """Run a PostgreSQL tool as the OS user; ``(exit status, stdout + stderr)``."""
        cwd = self.data_dir if self.data_dir.is_dir() else Path("/")
        done = await asyncio.to_thread(
            run_as, self.user, argv, cwd=cwd, env=self._env(), timeout=timeout
        )
        return done.returncode, (done.stdout + done.stderr).strip()

    async def pg_ctl(
        self, *args: str | os.PathLike[str], timeout: float = 180.0
    ) -> tuple[int, str]:
        return await self.run(self.bindir / "pg_ctl", "-D", self.data_dir, *args, timeout=timeout)

    async def psql(self, sql: str, timeout: float = 60.0) -> tuple[int, str]:
        """One statement through ``psql -X -A -t``; rows one per line, columns ``|``-separated."""
        return await self.run(
            self.bindir / "psql",
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-d",
            self.dbname,
            "-c",
            sql,
            timeout=timeout,
        )

    async def query(self, sql: str) -> str:
        code, out = await self.psql(sql)
        if code != 0:
            raise _fail(f"query {sql!r} failed on the restored cluster: {out}")
        return out

    async def is_running(self) -> bool:
        code, _ = await self.pg_ctl("status")
        return code == 0

    async def start(self, log_file: Path) -> None:
        """``pg_ctl start`` without waiting (recovery may take hours); :meth:`alive` follows it."""
        self.log_file = log_file
        if not log_file.parent.exists():
            log_file.parent.mkdir(mode=0o700, parents=True)
            chown_to(log_file.parent, self.user)
        pid_file = self.data_dir / "postmaster.pid"
        code, out = await self.pg_ctl("start", "-W", "-s", "-l", log_file)
        if code != 0:
            raise _fail(f"pg_ctl start failed: {out} {self.log_tail()}")
        deadline = time.monotonic() + START_GRACE_S
        while self.pid is None:
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                self.pid = int(pid_file.read_text().splitlines()[0])
            if self.pid is not None:
                break
            if time.monotonic() > deadline or self.fatal_line():
                raise _fail(f"PostgreSQL did not start: {self.failure_reason()}")
            await asyncio.sleep(0.05)

    def alive(self) -> bool:
        """The postmaster started by :meth:`start` still runs (a zombie does not count)."""
        if self.pid is None:
            return False
        _reap(self.pid)
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}

    async def stop(self, mode: str = "fast") -> None:
        if not (await self.is_running()):
            return
        code, out = await self.pg_ctl("stop", "-w", "-t", "300", "-m", mode, timeout=330)
        if code != 0 and await self.is_running():
            raise _fail(f"pg_ctl stop -m {mode} failed: {out}", retryable=True)
        if self.pid is not None:
            _reap(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_file is None:
            return ""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fatal_line(self) -> str | None:
        """The first FATAL or PANIC message in this start's server log, without its prefix."""
        if self.log_file is None:
            return None
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            match = _FATAL.search(line)
            # Our own polling connections are refused with FATALs while the server starts:
            # those say nothing about why it stopped.
            if match and not _REFUSED_CONNECTION.search(match[2]):
                return f"{match[1]}: {match[2].strip()}"
        return None

    def failure_reason(self) -> str:
        fatal = self.fatal_line()
        if fatal:
            return f"PostgreSQL {fatal}"
        return f"the server exited; last log lines: {self.log_tail(8)}"


_FATAL = re.compile(r"\b(FATAL|PANIC):\s+(.*)$")
_REFUSED_CONNECTION = re.compile(
    r"the database system is (starting up|not yet accepting connections|shutting down|"
    r"in recovery mode|not accepting connections)"
)


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


async def server_major(bindir: Path, user: OsUser) -> int:
    done = await asyncio.to_thread(run_as, user, [bindir / "postgres", "-V"], cwd="/")
    match = re.search(r"\(PostgreSQL\) (\d+)", done.stdout)
    if done.returncode != 0 or match is None:
        raise _fail(f"cannot tell the server version of {bindir}: {done.stdout}{done.stderr}")
    return int(match[1])


# -- the base backup -------------------------------------------------------------------------------


async def load_manifest(store: BlobStore, key: str) -> BaseManifest:
    """The base backup's manifest; ``EngineError`` when it is missing or not one."""
    try:
        raw = await store.get_bytes(key)
    except ObjectNotFound:
        raise _fail(f"no base backup manifest at {key}") from None
    except RetryableBlobError as exc:
        raise _fail(f"reading {key}: {exc}", retryable=True) from exc
    try:
        return BaseManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise _fail(f"{key} is not a PostgreSQL base backup manifest: {exc}") from None


class _Abandoned(Exception):
    """The extracting side stopped reading: the download stops feeding it."""


class _Pipe(io.RawIOBase):
    """A blocking file the extracting thread reads, fed chunk by chunk by the download.

    Either side can stop the other: :meth:`abort` makes the reader raise, and a reader that
    finished (or failed) makes :meth:`put` raise :class:`_Abandoned` — a bad archive must not
    leave the download blocked on a full queue, nor a failed download a thread waiting forever.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(PIPE_DEPTH)
        self._buffer = memoryview(b"")
        self._eof = False
        self._error: BaseException | None = None
        self.reader_done = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            if self._eof:
                return 0
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._error is not None:
                    raise self._error from None
                continue
            if item is None:
                self._eof = True
                return 0
            self._buffer = memoryview(item)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def put(self, item: bytes | None) -> None:
        """Called in a worker thread: blocks while the queue is full."""
        while True:
            if self.reader_done.is_set():
                raise _Abandoned
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def abort(self, error: BaseException) -> None:
        self._error = error


def _safe_filter(user: OsUser) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    def accept(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        member = tarfile.data_filter(member, dest)  # refuses absolute, .., escaping links, devices
        return member.replace(uid=user.uid, gid=user.gid, uname="", gname="", deep=False)

    return accept


def _extract(pipe: _Pipe, dest: Path, user: OsUser) -> int:
    """Extract the tar stream from ``pipe`` into ``dest`` (in a worker thread); returns members."""
    count = 0
    try:
        with tarfile.open(fileobj=pipe, mode="r|") as archive:
            accept = _safe_filter(user)
            for member in archive:
                archive.extract(member, dest, filter=accept, numeric_owner=True)
                count += 1
        while pipe.read(1 << 20):  # read the rest, so every part is read to its verified end
            pass
    finally:
        pipe.reader_done.set()
    return count


def _decode_into_pipe(decoder: _Decoder, chunk: bytes, pipe: _Pipe) -> int:
    data = decoder.feed(chunk)
    if data:
        pipe.put(data)
    return len(data)


async def extract_base(
    store: BlobStore,
    manifest: BaseManifest,
    dest: Path,
    user: OsUser,
    ctx: JobContext,
) -> int:
    """Download the base backup's parts in order and extract them into ``dest``; returns the
    number of tar members. Raises ``EngineError`` (retryable for store trouble)."""
    pg = manifest.postgres
    pipe = _Pipe()
    extracting = asyncio.create_task(asyncio.to_thread(_extract, pipe, dest, user))
    decoder = _Decoder(pg.compression)
    done = 0
    last_report = 0.0
    try:
        try:
            for index, part in enumerate(pg.parts):
                info = await store.head(part.key)
                if info is None:
                    raise _fail(f"base backup part {part.key} is missing from the store")
                if info.crc32c != part.crc32c or info.size != part.size:
                    raise _fail(
                        f"{part.key}: the store holds crc32c={info.crc32c} size={info.size}, the "
                        f"manifest says crc32c={part.crc32c} size={part.size}"
                    )
                async with store.open_read(part.key) as reader:
                    async for chunk in reader:  # verified against the crc32c at the end
                        # Decoding and waiting for room in the pipe both happen off the loop.
                        done += await asyncio.to_thread(_decode_into_pipe, decoder, chunk, pipe)
                        if time.monotonic() - last_report > 1.0:
                            last_report = time.monotonic()
                            await ctx.progress(
                                "download",
                                done=done,
                                total=pg.tar_bytes,
                                unit="bytes",
                                message=f"part {index + 1} of {len(pg.parts)}",
                            )
            decoder.finish()
            if done != pg.tar_bytes:
                raise _fail(
                    f"the base backup's tar is {done} bytes, its manifest says {pg.tar_bytes}"
                )
            await asyncio.to_thread(pipe.put, None)
        except _Abandoned:
            pass  # the extraction stopped early: its own error (below) is the one to report
        except BaseException as exc:
            pipe.abort(RuntimeError(f"download failed: {exc}"))
            # No thread may write into the directory after we return, even when cancelled.
            await asyncio.gather(asyncio.shield(extracting), return_exceptions=True)
            raise
        members = await extracting
    except EngineError:
        raise
    except IntegrityError as exc:
        raise _fail(f"the base backup is corrupt: {exc}") from exc
    except RetryableBlobError as exc:
        raise _fail(f"downloading the base backup: {exc}", retryable=True) from exc
    except BlobStoreError as exc:
        raise _fail(f"downloading the base backup: {exc}") from exc
    except (tarfile.TarError, OSError) as exc:
        raise _fail(f"extracting the base backup into {dest}: {exc}") from exc
    await ctx.progress("download", done=done, total=pg.tar_bytes, unit="bytes")
    return members


def prepare_data_dir(data_dir: Path, user: OsUser) -> None:
    """After extraction: the OS user owns everything, the directory is 0700, no stale pid."""
    (data_dir / "postmaster.pid").unlink(missing_ok=True)
    for sub in ("pg_wal", "pg_wal/archive_status"):
        (data_dir / sub).mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0 and not user.is_current:
        for root, dirs, files in os.walk(data_dir):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), user.uid, user.gid)
    chown_to(data_dir, user)
    data_dir.chmod(0o700)


# -- settings --------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise _fail(f"setting value may not contain newlines: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def recovery_settings(command: RunRestore) -> dict[str, str]:
    """The ``recovery_target*`` settings for ``command``: the catalog's, completed from the
    target where the catalog gave none."""
    given = dict(command.plan.recovery)
    unknown = sorted(set(given) - RECOVERY_SETTINGS)
    if unknown:
        raise _fail(f"the restore plan sets {', '.join(unknown)}, which a restore may not set")
    settings = dict(given)
    target = command.target
    if not TARGET_SETTINGS & set(given):
        if isinstance(target, TargetTime):
            settings["recovery_target_time"] = target.at.isoformat(sep=" ")
        elif isinstance(target, TargetPosition):
            if target.position.kind != "lsn":
                raise _fail("a PostgreSQL restore targets an LSN, not an SCN")
            settings["recovery_target_lsn"] = str(target.position)
        elif isinstance(target, TargetXid):
            settings["recovery_target_xid"] = str(target.xid)
        elif isinstance(target, TargetName):
            settings["recovery_target_name"] = target.name
        elif isinstance(target, TargetImmediate):
            settings["recovery_target"] = "immediate"
        else:
            raise _fail(f"a PostgreSQL restore cannot target {target.kind}")
    if "recovery_target_time" in settings:
        settings.setdefault("recovery_target_inclusive", "true")
    lineage = command.plan.lineage
    if isinstance(lineage, Timeline):
        settings.setdefault("recovery_target_timeline", str(lineage.id))
    settings.setdefault("recovery_target_action", "promote")
    return settings


_CONF_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?")


def write_auto_conf(
    data_dir: Path,
    settings: Mapping[str, str],
    user: OsUser,
    note: str,
    *,
    drop: Collection[str] = (),
) -> None:
    """Set ``settings`` in ``postgresql.auto.conf``: earlier lines for the same names, lines for
    the names in ``drop`` and an earlier ``note`` line are removed."""
    path = data_dir / "postgresql.auto.conf"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = ["# Do not edit this file manually!", "# It will be overwritten by ALTER SYSTEM."]
    kept = []
    for line in lines:
        match = _CONF_NAME.match(line)
        if match and (match[1].lower() in settings or match[1].lower() in drop):
            continue
        if line == f"# {note}":
            continue
        kept.append(line)
    if settings:
        kept.append(f"# {note}")
        kept.extend(f"{name} = {_quote(value)}" for name, value in settings.items())
    write_owned(path, "\n".join(kept) + "\n", user)


def write_owned(path: Path, text: str, user: OsUser, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tidemark")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    chown_to(tmp, user)
    os.replace(tmp, path)


@dataclass
class FetchRig:
    """Where this restore's fetch server listens and ``wal-fetch`` is installed."""

    run_dir: Path
    cache_dir: Path
    tool: Path

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "fetch.sock"

    def restore_command(self, *, take_ready: bool = False) -> str:
        """``wal-fetch`` on this rig's socket; with ``take_ready``, first a plain ``mv`` of a
        segment the fetch server has already verified into the cache (see ``fetchserver.py``):
        a few milliseconds instead of a Python start while recovery waits."""
        fetch = f"{self.tool} --socket {self.socket_path} %f %p"
        if not take_ready:
            return fetch
        cache = shlex.quote(os.fspath(self.cache_dir)).replace("%", "%%")
        return f"mv -f {cache}/%f %p 2>/dev/null || {fetch}"

    def remove(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.cache_dir, ignore_errors=True)


def cache_path(parent: Path, tag: str) -> Path:
    """The fetch server's cache for restore ``tag``: absolute, because ``restore_command`` runs
    in the data directory and READY answers name full paths."""
    return Path(os.path.abspath(parent)) / f".tidemark-wal-{tag}"


async def make_fetch_rig(user: OsUser, cache_parent: Path, tag: str) -> FetchRig:
    """A run directory the OS user owns (0700; short, for the socket path's 107-byte limit)
    holding ``wal-fetch``, and a cache directory (0700) beside the data directory, so on its
    volume: the fetch server gives it to the OS user when it hands files over by rename."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"tm-fetch-{tag}-"))
    cache_dir = cache_path(cache_parent, tag)
    try:
        os.chmod(run_dir, 0o700)
        chown_to(run_dir, user)
        tool = await asyncio.to_thread(
            install_user_tool, walfetch.__file__, run_dir / "bin", name=WALFETCH_TOOL, user=user
        )
        cache_dir.mkdir(mode=0o700, exist_ok=True)
    except (OsCommandError, OSError) as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise _fail(f"cannot install {WALFETCH_TOOL} for OS user {user.name!r}: {exc}") from exc
    return FetchRig(run_dir, cache_dir, tool)


# -- recovery --------------------------------------------------------------------------------------


@dataclass
class RecoveryOutcome:
    """Where recovery ended, read from the promoted server."""

    timeline: int
    parent: int
    branch_lsn: int
    reason: str
    last_replay_lsn: int | None
    last_xact_time: datetime | None
    extra: dict[str, str] = field(default_factory=dict)


async def wait_for_recovery(
    inst: Instance, ctx: JobContext, stats: FetchStats, start_lsn: int, goal_lsn: int | None
) -> None:
    """Follow recovery until the server leaves it; raise with the server's reason if it dies."""
    last_report = 0.0
    while True:
        if not inst.alive():
            raise _fail(f"recovery failed: {inst.failure_reason()}")
        code, out = await inst.psql("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()")
        if code == 0:
            in_recovery, _, lsn_text = out.partition("|")
            if in_recovery == "f":
                return
            if lsn_text and time.monotonic() - last_report > 1.0:
                last_report = time.monotonic()
                lsn = parse_lsn(lsn_text)
                total = goal_lsn - start_lsn if goal_lsn is not None else None
                await ctx.progress(
                    "recover",
                    done=max(0, lsn - start_lsn),
                    total=total if total is not None and total > 0 else None,
                    unit="bytes",
                    message=f"replayed to {lsn_text}; {stats.served} WAL files fetched",
                )
        await asyncio.sleep(POLL_S)


async def read_outcome(inst: Instance) -> RecoveryOutcome:
    """The new timeline and exactly where it branched (its history file's last line)."""
    replay = await inst.query(
        "SELECT pg_last_wal_replay_lsn(), "
        "to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
    )
    lsn_text, _, time_text = replay.partition("|")
    # The timeline WAL is now written on, from the name of the current segment: promotion has
    # switched to it at once, while pg_control_checkpoint() would only show it after the next
    # checkpoint — and forcing one here (a full flush of everything replayed) is what made a
    # restore slower than it needs to be. The segments replayed are kept in pg_wal under their
    # own names, so a crash before that checkpoint recovers locally.
    walfile = await inst.query("SELECT pg_walfile_name(pg_current_wal_lsn())")
    timeline = int(walfile[:8], 16)
    history = inst.data_dir / "pg_wal" / f"{timeline:08X}.history"
    try:
        text = history.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(
            f"recovery ended on timeline {timeline} without a history file: it did not "
            "branch a new timeline"
        ) from None
    entries = [line.split("\t") for line in text.splitlines() if line and line[0].isdigit()]
    if not entries or len(entries[-1]) < 2:
        raise _fail(f"{history.name} does not say where timeline {timeline} branched: {text!r}")
    last = entries[-1]
    return RecoveryOutcome(
        timeline=timeline,
        parent=int(last[0]),
        branch_lsn=parse_lsn(last[1]),
        reason=last[2].strip() if len(last) > 2 else "",
        last_replay_lsn=parse_lsn(lsn_text) if lsn_text else None,
        last_xact_time=datetime.fromisoformat(time_text).replace(tzinfo=UTC) if time_text else None,
    )


async def recover(
    inst: Instance,
    *,
    store: BlobStore,
    prefix: str,
    uid: str,
    plan_keys: list[str],
    settings: Mapping[str, str],
    overrides: Mapping[str, str],
    ctx: JobContext,
    prefetch: int,
    tag: str,
    start_lsn: int,
    goal_lsn: int | None,
    stats: FetchStats,
) -> RecoveryOutcome:
    """Configure recovery in ``inst.data_dir``, run it with a fetch server, return where it
    ended; the server is left running, promoted, with the recovery settings removed."""
    rig = await make_fetch_rig(inst.user, inst.data_dir.parent, tag)
    try:
        async with serve_wal(
            store,
            prefix=prefix,
            uid=uid,
            socket_path=rig.socket_path,
            cache_dir=rig.cache_dir,
            prefetch=prefetch,
            plan_keys=plan_keys,
            user=inst.user,
            stats=stats,
            hand_over_to=inst.data_dir / "pg_wal",
        ) as server:
            command = rig.restore_command(take_ready=server.hands_over)
            recovery = {"restore_command": command, **settings}
            write_auto_conf(
                inst.data_dir, {**recovery, **overrides}, inst.user, f"tidemark restore {tag}"
            )
            write_owned(inst.data_dir / "recovery.signal", "", inst.user)
            log_dir = inst.data_dir / "log"
            log_dir.mkdir(mode=0o700, exist_ok=True)
            chown_to(log_dir, inst.user)
            await ctx.progress("recover", message="starting PostgreSQL in archive recovery")
            await inst.start(log_dir / f"tidemark-restore-{tag}.log")
            await wait_for_recovery(inst, ctx, stats, start_lsn, goal_lsn)
            outcome = await read_outcome(inst)
        if stats.errors:
            raise _fail(
                f"{stats.errors} WAL fetches failed during recovery (last: {stats.last_error}); "
                "PostgreSQL cannot tell a failed fetch from the end of WAL, so where it stopped "
                "is not trusted"
            )
        # The recovery settings name this restore's socket, which goes away now.
        write_auto_conf(
            inst.data_dir, overrides, inst.user, f"tidemark restore {tag}", drop=recovery
        )
        await reload(inst)
        return outcome
    finally:
        rig.remove()


async def reload(inst: Instance, timeout: float = 30.0) -> None:
    """Reread the configuration and wait until new sessions see it (``pg_ctl reload`` only
    sends SIGHUP); a reload not seen in time is logged, not fatal: the restore itself is done."""
    before = await inst.query("SELECT pg_conf_load_time()")
    code, out = await inst.pg_ctl("reload", "-s")
    if code != 0:
        log.warning("pg_ctl reload of %s: %s", inst.data_dir, out)
        return
    deadline = time.monotonic() + timeout
    while await inst.query("SELECT pg_conf_load_time()") == before:
        if time.monotonic() > deadline:
            log.warning("reload of %s not seen after %.0fs", inst.data_dir, timeout)
            return
        await asyncio.sleep(0.05)


# -- restore ---------------------------------------------------------------------------------------


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _clear(path: Path, *, keep_dir: bool) -> None:
    if keep_dir and path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _moved_aside(data_dir: Path, aside: Path) -> Iterator[None]:
    """Move ``data_dir`` to ``aside`` for the block; put it back if the block fails."""
    had = data_dir.exists()
    if aside.exists():
        raise _fail(f"{aside} exists: a previous restore left it; look at it and remove it")
    if had:
        os.rename(data_dir, aside)
    try:
        yield
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        if had:
            os.rename(aside, data_dir)
        raise


async def restore(
    db: HostedDatabase,
    command: RunRestore,
    *,
    store: BlobStore,
    prefix: str,
    ctx: JobContext,
    settings: ExecutorSettings,
    stats: FetchStats | None = None,
) -> RestoreResult:
    """Restore ``db`` (in place or as a clone) to ``command.target``; see the module docstring.

    ``stats`` (optional) is filled with the fetch server's figures (``wal_fetch`` throughput).
    """
    if db.postgres is None:
        raise _fail(f"database {db.uid} is not a PostgreSQL database")
    tag = command.restore_id.hex[-8:]  # the random end of a UUIDv7, not its clock
    source = Instance.of(db.postgres)
    stats = stats if stats is not None else FetchStats()
    await ctx.progress("prepare", message="reading the base backup's manifest")
    manifest = await load_manifest(store, command.plan.base_manifest_key)
    pg = manifest.postgres
    major = await server_major(source.bindir, source.user)
    if pg.pg_version // 10000 != major:
        raise _fail(
            f"the base backup is from PostgreSQL {pg.pg_version // 10000}, this node's server "
            f"binaries ({source.bindir}) are {major}"
        )
    if db.system_id is not None and pg.system_id != db.system_id:
        raise _fail(
            f"the base backup is of system {pg.system_id}, database {db.uid} is {db.system_id}"
        )
    target_settings = recovery_settings(command)
    goal = command.target.position.value if isinstance(command.target, TargetPosition) else None
    job = _Rebuild(
        manifest=manifest,
        command=command,
        store=store,
        prefix=prefix,
        uid=db.uid,
        ctx=ctx,
        settings=settings,
        target_settings=target_settings,
        tag=tag,
        start_lsn=manifest.backup.start.value,
        goal_lsn=goal,
        stats=stats,
    )
    if command.mode is RestoreMode.CLONE:
        assert command.clone is not None
        inst = Instance(
            data_dir=Path(command.clone.data_dir),
            port=command.clone.port,
            socket_dir=source.socket_dir,
            user=source.user,
            bindir=source.bindir,
            dbname=source.dbname,
            password_file=source.password_file,
        )
        overrides = {
            "port": str(inst.port),
            "unix_socket_directories": str(inst.socket_dir),
            "archive_mode": "off",
            "archive_command": "",
        }
        return await _restore_clone(inst, job, overrides)
    return await _restore_in_place(source, job)


@dataclass(frozen=True)
class _Rebuild:
    """What both kinds of restore do in an empty data directory: lay the base down, configure
    recovery, recover. A clone and an in-place restore differ only around it."""

    manifest: BaseManifest
    command: RunRestore
    store: BlobStore
    prefix: str
    uid: str
    ctx: JobContext
    settings: ExecutorSettings
    target_settings: dict[str, str]
    tag: str
    start_lsn: int
    goal_lsn: int | None
    stats: FetchStats

    async def run(self, inst: Instance, overrides: dict[str, str], where: str) -> RecoveryOutcome:
        """Into `inst.data_dir`; on any failure the server it started is stopped."""
        try:
            await extract_base(self.store, self.manifest, inst.data_dir, inst.user, self.ctx)
            await self.ctx.progress("configure", message=where)
            prepare_data_dir(inst.data_dir, inst.user)
            return await recover(
                inst,
                store=self.store,
                prefix=self.prefix,
                uid=self.uid,
                plan_keys=list(self.command.plan.log_keys),
                settings=self.target_settings,
                overrides=overrides,
                ctx=self.ctx,
                prefetch=self.settings.prefetch,
                tag=self.tag,
                start_lsn=self.start_lsn,
                goal_lsn=self.goal_lsn,
                stats=self.stats,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await inst.stop("immediate")
            raise


async def _restore_clone(inst: Instance, job: _Rebuild, overrides: dict[str, str]) -> RestoreResult:
    data_dir = inst.data_dir
    existed = data_dir.exists()
    if existed and not _is_empty_dir(data_dir):
        raise _fail(f"clone directory {data_dir} is not empty; a clone is restored into a new one")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    chown_to(data_dir, inst.user)
    try:
        outcome = await job.run(inst, overrides, f"clone on port {inst.port}")
    except BaseException:
        _clear(data_dir, keep_dir=existed)
        raise
    return _result(outcome, job.stats, job.tag)


async def _restore_in_place(inst: Instance, job: _Rebuild) -> RestoreResult:
    data_dir = inst.data_dir
    aside = data_dir.with_name(f"{data_dir.name}.tidemark-old-{job.tag}")
    was_running = data_dir.exists() and await inst.is_running()
    if was_running:
        await job.ctx.progress("prepare", message=f"stopping the cluster in {data_dir}")
        await inst.stop("fast")
    try:
        with _moved_aside(data_dir, aside):
            data_dir.mkdir(mode=0o700)
            chown_to(data_dir, inst.user)
            outcome = await job.run(inst, {}, f"in place in {data_dir}")
    except BaseException:
        if was_running:  # leave the database as we found it
            inst.pid = None
            with contextlib.suppress(Exception):
                await inst.start(data_dir / "log" / f"tidemark-rollback-{job.tag}.log")
        raise
    # Kept, not deleted (see the module docstring): `tidemark leftovers` removes it when told.
    log.info("restore %s: the previous data directory is kept at %s", job.tag, aside)
    return _result(outcome, job.stats, job.tag)


def _result(outcome: RecoveryOutcome, stats: FetchStats, tag: str) -> RestoreResult:
    log.info(
        "restore %s reached %s on timeline %d (%s); wal fetch: %d files, %.1f MiB at %.1f MiB/s, "
        "%d prefetch hits",
        tag,
        format_lsn(outcome.branch_lsn),
        outcome.timeline,
        outcome.reason,
        stats.served,
        stats.fetched_bytes / (1 << 20),
        stats.fetch_mib_s,
        stats.prefetch_hits,
    )
    branch = Lsn(value=outcome.branch_lsn)
    return RestoreResult(
        reached=branch,
        reached_time=outcome.last_xact_time,
        lineage=Timeline(id=outcome.timeline, parent=outcome.parent, branch_lsn=branch),
    )
