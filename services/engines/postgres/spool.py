"""The spool: where PostgreSQL's ``archive_command`` leaves WAL files for the archiver.

One spool per database, on the database's machine::

    <spool>/          owner: the database OS user; group: the archiver's; mode 2770 (setgid, so
                      every file in it gets the archiver's group)
      spool.json      {"format": 1, "database_uid": "...", "max_bytes": N, "min_free_bytes": N,
                      "readahead_wait_s": S} (optional; defaults 8 GiB, 256 MiB and 10 s),
                      written by the archiver, 0644
      .tmp/           walpush's in-flight copies, ``<file>.<pid>.<random>``; never read here
      ready/          complete, fsynced files (0640), the directory fsynced after each link
      stored/         read-ahead markers (0644), written by the archiver: ``stored/<file>`` says
                      the store holds, verified, the very ``pg_wal/<file>`` it read (or declines it)
      readahead.lock  flocked by the archiver while it reads ahead and its store answers
      notify.sock     the archiver's AF_UNIX datagram socket; walpush sends each file name to it

:mod:`.walpush` is the writer (run by PostgreSQL, standard library only); this module is the
archiver's side: create the layout (:meth:`Spool.init`), list and release what is
ready, bind the notification socket, and build the ``archive_command`` that runs walpush. Nothing
leaves ``ready/`` until the archiver has it in the store and the catalog (:meth:`Spool.release`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from schemas import DatabaseUid
from services.engines.postgres.oscmd import (
    OsCommandError,
    OsUser,
    check_traversable,
    database_os_user,
    install_user_tool,
    system_python,
)
from services.engines.postgres.walfile import (
    WalFileKind,
    WalFileName,
    WalNameError,
    classify,
    parse_name,
)
from services.engines.postgres.walpush import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MIN_FREE_BYTES,
    DEFAULT_READAHEAD_WAIT_S,
    IDENTITY,
    MARKER_FORMAT,
    READAHEAD_LOCK,
    SPOOL_FORMAT,
    STORED_DIR,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MIN_FREE_BYTES",
    "DEFAULT_READAHEAD_WAIT_S",
    "DIR_MODE",
    "SPOOL_FORMAT",
    "WALPUSH_MODULE",
    "WALPUSH_SOURCE",
    "ReadAheadLock",
    "ReadyFile",
    "Spool",
    "SpoolConfig",
    "SpoolError",
    "SpoolUsage",
    "install_walpush",
]

CONFIG_NAME = "spool.json"
TMP_DIR = ".tmp"
READY_DIR = "ready"
NOTIFY_SOCKET = "notify.sock"

DIR_MODE = 0o2770
"""Spool directories: the database user writes, the archiver's group reads and deletes."""

CONFIG_MODE = 0o644
"""``spool.json``: the database user must read it, only the archiver writes it."""

SOCKET_MODE = 0o660

MARKER_MODE = 0o644
"""``stored/`` markers and ``readahead.lock``: walpush (the database user) reads them whatever
group the archiver runs with; they hold no secret (a name, a file identity, a checksum)."""

Identity = tuple[int, int, int, int, int]
"""(device, inode, size, mtime_ns, ctime_ns) of a ``pg_wal`` file, as walpush compares it."""

WALPUSH_SOURCE = Path(__file__).with_name("walpush.py")
"""The push program's source, installed with :func:`install_walpush`."""

_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, NUL included
_COMMAND_PATH = re.compile(r"/[A-Za-z0-9_./+,:@=-]*")
_DATABASE_UID: TypeAdapter[str] = TypeAdapter(DatabaseUid)


class SpoolError(RuntimeError):
    """The spool cannot be set up or used as asked; the message says what to change."""


@dataclass(frozen=True)
class SpoolConfig:
    """The contents of ``spool.json`` (or the defaults, with no database, when it is absent)."""

    database_uid: str | None
    max_bytes: int = DEFAULT_MAX_BYTES
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    #: How long walpush waits for the archiver to store a file it reads ahead.
    readahead_wait_s: float = DEFAULT_READAHEAD_WAIT_S

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": SPOOL_FORMAT,
                "database_uid": self.database_uid,
                "max_bytes": self.max_bytes,
                "min_free_bytes": self.min_free_bytes,
                "readahead_wait_s": self.readahead_wait_s,
            },
            indent=2,
        )


@dataclass(frozen=True)
class ReadyFile:
    """A file in ``ready/``: complete and durable, waiting to be streamed."""

    wal: WalFileName
    path: Path
    size: int

    @property
    def name(self) -> str:
        return self.wal.name

    @property
    def kind(self) -> WalFileKind:
        return self.wal.kind


@dataclass(frozen=True)
class SpoolUsage:
    """What ``ready/`` holds, counted as walpush counts it against ``max_bytes``."""

    count: int
    bytes: int


def _non_negative(name: str, value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def _wait_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise ValueError(f"readahead_wait_s must be a number of seconds (0-3600), not {value!r}")
    return float(value)


class Spool:
    """One database's spool directory (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()

    @property
    def ready_dir(self) -> Path:
        return self.path / READY_DIR

    @property
    def tmp_dir(self) -> Path:
        return self.path / TMP_DIR

    @property
    def stored_dir(self) -> Path:
        return self.path / STORED_DIR

    @property
    def readahead_lock_path(self) -> Path:
        return self.path / READAHEAD_LOCK

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def notify_socket_path(self) -> Path:
        """Where the archiver binds its datagram socket and walpush sends file names."""
        return self.path / NOTIFY_SOCKET

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    # -- setting up ----------------------------------------------------------------------------

    def init(
        self,
        database_uid: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        owner: OsUser | None = None,
        readahead_wait_s: float = DEFAULT_READAHEAD_WAIT_S,
    ) -> SpoolConfig:
        """Create (or repair) the layout for ``owner``, the database OS user, and write spool.json.

        Directories are owned by ``owner`` (default: this process's user) with this process's
        group and mode 2770. As root that is a chown; otherwise the directories stay ours and
        ``owner`` must be a member of our group to write them. Re-running with the same
        ``database_uid`` is harmless and may change the limits; a spool that belongs to another
        database is refused (two databases never share one). Files already in ``ready/`` stay.
        """
        try:
            _DATABASE_UID.validate_python(database_uid)
        except ValidationError:
            raise ValueError(f"not a database uid (a DNS label): {database_uid!r}") from None
        config = SpoolConfig(
            database_uid,
            _non_negative("max_bytes", max_bytes),
            _non_negative("min_free_bytes", min_free_bytes),
            _wait_seconds(readahead_wait_s),
        )
        writer = owner if owner is not None else OsUser.current()
        as_root = os.geteuid() == 0
        group = os.getegid()
        if not (as_root or writer.is_current or group in writer.groups):
            raise SpoolError(
                f"OS user {writer.name!r} is not in group {group}, so it could not write a spool "
                f"prepared by uid {os.geteuid()}; add it to the group, or run init as root"
            )
        if self.config_path.exists():
            present = self.config().database_uid
            if present not in (None, database_uid):
                raise SpoolError(
                    f"{self.path} is the spool of database {present!r}, not {database_uid!r}: "
                    "two databases never share a spool"
                )

        for directory in (self.path, self.tmp_dir, self.ready_dir, self.stored_dir):
            directory.mkdir(parents=True, exist_ok=True)
            if as_root:
                os.chown(directory, writer.uid, group)
            directory.chmod(DIR_MODE)  # mkdir's mode is filtered by the umask
        try:
            check_traversable(self.ready_dir, writer)
        except OsCommandError as exc:
            raise SpoolError(str(exc)) from None
        self._write_config(config)
        return config

    def _write_config(self, config: SpoolConfig) -> None:
        tmp = self.path / f".{CONFIG_NAME}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, CONFIG_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(config.to_json() + "\n")
                handle.flush()
                os.fchmod(handle.fileno(), CONFIG_MODE)
                os.fsync(handle.fileno())
            os.replace(tmp, self.config_path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.path)

    def config(self) -> SpoolConfig:
        """What ``spool.json`` says, with the contract's defaults for what it leaves out."""
        try:
            raw = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return SpoolConfig(None)
        except ValueError as exc:
            raise SpoolError(f"{self.config_path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != SPOOL_FORMAT:
            raise SpoolError(f"{self.config_path}: not a format {SPOOL_FORMAT} spool configuration")
        uid = raw.get("database_uid")
        try:
            return SpoolConfig(
                uid if isinstance(uid, str) else None,
                _non_negative("max_bytes", raw.get("max_bytes", DEFAULT_MAX_BYTES)),
                _non_negative("min_free_bytes", raw.get("min_free_bytes", DEFAULT_MIN_FREE_BYTES)),
                _wait_seconds(raw.get("readahead_wait_s", DEFAULT_READAHEAD_WAIT_S)),
            )
        except ValueError as exc:
            raise SpoolError(f"{self.config_path}: {exc}") from None

    # -- draining ------------------------------------------------------------------------------

    def _ready_entries(self) -> list[tuple[str, os.stat_result]]:
        found: list[tuple[str, os.stat_result]] = []
        with os.scandir(self.ready_dir) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # released meanwhile
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((entry.name, st))
        return found

    def ready_files(self) -> list[ReadyFile]:
        """The WAL files in ``ready/``, by name (so by timeline, then LSN within a timeline).

        Anything whose name is not a WAL file name is not listed (walpush never writes one).
        """
        files: list[ReadyFile] = []
        for name, st in self._ready_entries():
            try:
                wal = parse_name(name)
            except WalNameError:
                continue
            files.append(ReadyFile(wal, self.ready_dir / name, st.st_size))
        return sorted(files, key=lambda f: f.name)

    def usage(self) -> SpoolUsage:
        """Count and total size of every regular file in ``ready/`` (what ``max_bytes`` limits)."""
        sizes = [st.st_size for _, st in self._ready_entries()]
        return SpoolUsage(len(sizes), sum(sizes))

    def ready_path(self, name: str) -> Path:
        """``ready/<name>`` for a WAL file name; :class:`WalNameError` for anything else."""
        return self.ready_dir / parse_name(name).name

    def release(self, name: str) -> bool:
        """Delete ``ready/<name>`` durably, once the store and the catalog both hold it.

        Returns False when it was already gone, so a repeated release is harmless.
        """
        try:
            self.ready_path(name).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.ready_dir)
        return True

    # -- read-ahead markers --------------------------------------------------------------------

    def ensure_stored_dir(self) -> None:
        """Create ``stored/`` in a spool made before read-ahead existed (as the archiver, inside
        the group-writable spool; walpush only reads it)."""
        if not self.stored_dir.is_dir():
            with contextlib.suppress(FileExistsError):
                self.stored_dir.mkdir()
            self.stored_dir.chmod(DIR_MODE)

    def mark_stored(self, name: str, identity: Identity, *, crc32c: str, key: str) -> None:
        """Tell walpush the store holds, verified, the ``pg_wal`` file with this ``identity``.

        Call it only once the store has confirmed the object and the journal has recorded it:
        from then on walpush acknowledges the file without copying it. The marker is not
        fsynced: lost in a power cut, it costs walpush a copy into ``ready/``; torn, it no
        longer parses and walpush copies too. The store, not the marker, holds the log.
        """
        fields = dict(zip(IDENTITY, identity, strict=True))
        self._write_marker(
            name,
            {"format": MARKER_FORMAT, "name": name, "stored": True, **fields,
             "crc32c": crc32c, "key": key},
        )  # fmt: skip

    def decline(self, name: str, reason: str) -> None:
        """Tell walpush not to wait for ``name``: the archiver will not store it from ``pg_wal``
        (walpush copies it into ``ready/``, where the usual checks and alarms apply)."""
        self._write_marker(
            name, {"format": MARKER_FORMAT, "name": name, "stored": False, "reason": reason}
        )

    def _write_marker(self, name: str, body: dict[str, object]) -> None:
        final = self.stored_dir / parse_name(name).name
        tmp = self.stored_dir / f".{name}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, MARKER_MODE)
        try:
            try:
                os.fchmod(fd, MARKER_MODE)
                os.write(fd, json.dumps(body).encode() + b"\n")
            finally:
                os.close(fd)
            os.replace(tmp, final)  # a newer word about the same file replaces the older
        finally:
            tmp.unlink(missing_ok=True)

    def marker(self, name: str) -> dict[str, object] | None:
        """The marker ``stored/<name>`` as written, or None."""
        try:
            raw = json.loads((self.stored_dir / parse_name(name).name).read_text("utf-8"))
        except FileNotFoundError:
            return None
        return raw if isinstance(raw, dict) else None

    def markers(self) -> list[str]:
        """Names that have a marker in ``stored/``."""
        try:
            names = os.listdir(self.stored_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if classify(n) is not None)

    def drop_marker(self, name: str) -> bool:
        """Remove ``stored/<name>`` (PostgreSQL no longer asks for that file); False if gone."""
        try:
            (self.stored_dir / parse_name(name).name).unlink()
        except FileNotFoundError:
            return False
        return True

    def bind_notify_socket(self) -> socket.socket:
        """Bind the archiver's datagram socket at :attr:`notify_socket_path` (replacing a stale
        one) so the database user can send to it: mode 0660, given to the spool directory's owner
        when we are root (otherwise the group grants it)."""
        path = self._socket_path_checked()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            path.unlink(missing_ok=True)
            sock.bind(str(path))
            path.chmod(SOCKET_MODE)
            if os.geteuid() == 0:
                os.chown(path, self.path.stat().st_uid, -1)
        except BaseException:
            sock.close()
            raise
        return sock

    def _socket_path_checked(self) -> Path:
        path = self.notify_socket_path
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            raise SpoolError(
                f"{path} is longer than the {_MAX_SOCKET_PATH} bytes a unix socket path may have; "
                "use a shorter spool path"
            )
        return path

    # -- wiring PostgreSQL to it ---------------------------------------------------------------

    def archive_command(
        self, python: str | os.PathLike[str], tool_path: str | os.PathLike[str]
    ) -> str:
        """The ``archive_command`` that runs walpush (installed at ``tool_path``) into this spool.

        ``'<python> -I -S <tool_path> --spool <spool> %p'``. PostgreSQL hands the command to
        ``/bin/sh`` after replacing ``%`` escapes, so every path must be absolute and made of
        characters neither the shell nor PostgreSQL treats specially: a path with a quote,
        space, ``%`` or the like raises ValueError rather than risk a wrong quoting.
        """
        self._socket_path_checked()  # else walpush's notifications would silently never arrive
        parts = [
            _command_path("python", python),
            "-I",
            "-S",
            _command_path("tool_path", tool_path),
            "--spool",
            _command_path("spool", self.path),
            "%p",
        ]
        return " ".join(parts)


def _command_path(what: str, path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    if not _COMMAND_PATH.fullmatch(text):
        raise ValueError(
            f"{what} {text!r} must be an absolute path of letters, digits and _./+,:@=- only "
            "(no quotes, spaces, % or shell characters) to go into archive_command"
        )
    return shlex.quote(text)  # unchanged for these characters; a second line of defence


class ReadAheadLock:
    """``readahead.lock``, held (``flock``, exclusive) while the archiver reads ahead.

    walpush waits for a marker only while the lock is held, so a dead archiver (the kernel
    drops the lock with the process) or one whose store is failing (it lets go) never makes
    PostgreSQL wait: walpush copies into ``ready/`` at once, as without read-ahead.
    """

    #: walpush tests the lock by taking it shared for an instant; retry past such a moment.
    ATTEMPTS = 50

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock (idempotent). False if another process holds it (a second archiver
        on this spool: it alone reads ahead) or the file cannot be made."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, MARKER_MODE)
        except OSError:
            return False
        try:
            os.fchmod(fd, MARKER_MODE)
            for attempt in range(self.ATTEMPTS):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if attempt + 1 < self.ATTEMPTS:
                        time.sleep(0.001)
                    continue
                self._fd, fd = fd, -1
                return True
            return False
        finally:
            if fd >= 0:
                os.close(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


WALPUSH_MODULE = "tidemark_walpush"
"""The name walpush's code is installed under, beside its launcher."""

_LAUNCHER = f'''\
"""walpush (Tidemark): PostgreSQL's archive_command. The code is {WALPUSH_MODULE}.py beside this
file, imported so that Python uses its compiled form (a script run directly is compiled anew at
every start: a quarter of walpush's run time)."""
import sys

sys.path.append(__file__.rpartition("/")[0])
sys.exit(__import__("{WALPUSH_MODULE}").main())
'''


def install_walpush(
    dest_dir: str | os.PathLike[str],
    *,
    user: OsUser | None = None,
    interpreter: str | os.PathLike[str] | None = None,
) -> Path:
    """Install walpush as ``dest_dir/walpush``, executable by ``user`` (default: the database OS
    user) with a system interpreter (see :func:`.oscmd.install_user_tool`); returns its path.

    ``dest_dir/walpush`` is a launcher that imports ``dest_dir/tidemark_walpush.py`` (the code,
    :data:`WALPUSH_SOURCE`), compiled here by that interpreter into ``__pycache__`` (owned by the
    installer, so the database user cannot change it). Should the interpreter change, Python
    compiles the code in memory at each start instead: slower, never wrong.
    """
    module = install_user_tool(
        WALPUSH_SOURCE, dest_dir, name=f"{WALPUSH_MODULE}.py", user=user, interpreter=interpreter
    )
    python = (
        interpreter
        if interpreter is not None
        else system_python(user if user is not None else database_os_user())
    )
    compiled = subprocess.run(
        [os.fspath(python), "-I", "-c", _PRECOMPILE, os.fspath(module)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if compiled.returncode != 0:
        raise SpoolError(f"cannot compile {module} with {python}: {compiled.stderr.strip()}")
    with tempfile.TemporaryDirectory() as scratch:
        launcher = Path(scratch) / "walpush.py"
        launcher.write_text(_LAUNCHER, encoding="utf-8")
        return install_user_tool(
            launcher, dest_dir, name="walpush", user=user, interpreter=interpreter
        )


_PRECOMPILE = "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)"
