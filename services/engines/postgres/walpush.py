#!/usr/bin/env python3
"""walpush: hand one file from PostgreSQL's ``archive_command`` to a Tidemark spool.

    archive_command = '/usr/bin/python3 -I -S /opt/tidemark/bin/walpush --spool /srv/spool/db %p'

PostgreSQL runs this as the database's OS user, once per file, so it uses the standard library
only (no Tidemark package, no virtualenv) and keeps start-up short. It copies ``%p`` into
``<spool>/.tmp/``, fsyncs the copy, links it into ``<spool>/ready/`` (a link, unlike a rename,
never replaces an existing file), fsyncs ``ready/``, then tells the archiver through
``<spool>/notify.sock``, best effort. Once this exits 0 PostgreSQL may recycle its segment: the
spool holds the durable copy, whether or not the archiver is running.

Read-ahead (the archiver watches ``pg_wal/archive_status`` and streams ``.ready`` files to the
store itself) spares the copy: ``<spool>/stored/<file>`` is the archiver's word that the store
holds, verified, exactly the file it read from ``pg_wal`` — identified by device, inode, size,
mtime and ctime, which PostgreSQL never changes once a file is ``.ready`` and which any write,
rename, link or chmod would. A marker naming the very file ``%p`` opens means the store holds it
durably: exit 0 without copying. While the archiver holds ``<spool>/readahead.lock`` (it does
while it reads ahead and its store answers) walpush waits up to ``readahead_wait_s`` for that
marker; without the lock, on a marker that names another file (or declines it), or after the
wait, it copies as above.

Exit status (PostgreSQL keeps its file and retries after any non-zero status):

    0  archived: the store holds this very file (read ahead), or it is in ``ready/`` now, or
       ``ready/`` already holds a byte-identical copy (a re-archive after a crash)
    1  not archived: an I/O error, the spool is full or not initialised, or a DIFFERENT file of
       the same name is already in ``ready/`` (never overwritten: someone must look)
    2  usage: bad arguments, or a name PostgreSQL does not archive

The spool layout and ``spool.json`` are described in ``docs/archiving-postgres.md``; the
archiver's side is ``services/engines/postgres/spool.py``.
"""

from __future__ import annotations

import posix as os  # ``os`` itself imports abc, stat, posixpath...: a tenth of our start-up
import sys

EXIT_OK = 0
EXIT_NOT_ARCHIVED = 1
EXIT_USAGE = 2

SPOOL_FORMAT = 1
MARKER_FORMAT = 1
DEFAULT_MAX_BYTES = 8 << 30
DEFAULT_MIN_FREE_BYTES = 256 << 20
DEFAULT_READAHEAD_WAIT_S = 10.0
FILE_MODE = 0o640  # the archiver reads through the spool's group
CHUNK = 1 << 20
STORED_DIR = "stored"
READAHEAD_LOCK = "readahead.lock"
#: The identity a marker records and walpush compares, as ``os.stat_result`` attributes.
IDENTITY = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
#: Prefix of the datagram walpush sends while it waits for a file read ahead ("?<file>"), as
#: opposed to "<file>", sent once a file is in ready/.
WAITING = "?"
#: Polling the marker while the archiver stores the file: first and longest pause, seconds.
POLL_FIRST_S = 0.0005
POLL_MAX_S = 0.002

USAGE = "usage: walpush --spool DIR PATH   (in archive_command: --spool DIR %p)"
_HEX = frozenset("0123456789ABCDEF")


class Refused(Exception):
    """The file was not archived; the message says why (PostgreSQL logs our stderr)."""

    def __init__(self, message: str, code: int = EXIT_NOT_ARCHIVED) -> None:
        super().__init__(message)
        self.code = code


def _join(*parts: str) -> str:
    return "/".join(parts)


def _isdir(path: str) -> bool:
    try:
        return os.stat(path).st_mode & 0o170000 == 0o040000  # S_ISDIR
    except OSError:
        return False


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in _HEX for c in text)


def is_wal_file_name(name: str) -> bool:
    """A segment, ``.partial`` segment, ``.history`` or ``.backup`` name, on a timeline >= 1."""
    if name.endswith(".history"):
        ok = _is_hex(name[:-8], 8)
    elif name.endswith(".partial"):
        ok = _is_hex(name[:-8], 24)
    elif name.endswith(".backup"):  # <segment>.<offset>.backup
        ok = len(name) == 40 and _is_hex(name[:24], 24) and _is_hex(name[25:33], 8)
        ok = ok and name[24] == "."
    else:
        ok = _is_hex(name, 24)
    return ok and name[:8] != "00000000"


def _load_json(text: str) -> object:
    """``json.loads``, without importing :mod:`json`.

    That import pulls in ``re`` and ``enum`` and costs as much as the rest of this program; its C
    scanner alone costs nothing. The context attributes are those of ``json.JSONDecoder``.
    """
    try:
        from _json import make_scanner
    except ImportError:  # an interpreter without the accelerator: pay for the real thing
        import json

        return json.loads(text)

    class _Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = float

    body = text.lstrip(" \t\r\n")
    try:
        value, end = make_scanner(_Context)(body, 0)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("not JSON") from None
    if body[end:].strip(" \t\r\n"):
        raise ValueError("extra data after the JSON value")
    return value


def read_config(spool: str) -> tuple[int, int, float]:
    """``(max_bytes, min_free_bytes, readahead_wait_s)`` from ``spool.json`` (or the defaults)."""
    if not _isdir(_join(spool, "ready")):
        raise Refused(f"{spool} is not an initialised spool (it has no ready/ directory)")
    path = _join(spool, "spool.json")
    try:
        with open(path, "rb") as handle:
            config = _load_json(handle.read().decode("utf-8"))
    except FileNotFoundError:
        return DEFAULT_MAX_BYTES, DEFAULT_MIN_FREE_BYTES, DEFAULT_READAHEAD_WAIT_S
    except ValueError as exc:  # also UnicodeDecodeError
        raise Refused(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != SPOOL_FORMAT:
        raise Refused(f"{path}: not a format {SPOOL_FORMAT} spool configuration")
    max_bytes = config.get("max_bytes", DEFAULT_MAX_BYTES)
    min_free_bytes = config.get("min_free_bytes", DEFAULT_MIN_FREE_BYTES)
    for key, value in (("max_bytes", max_bytes), ("min_free_bytes", min_free_bytes)):
        if type(value) is not int or value < 0:
            raise Refused(f"{path}: {key} must be a non-negative integer, not {value!r}")
    wait = config.get("readahead_wait_s", DEFAULT_READAHEAD_WAIT_S)
    if type(wait) not in (int, float) or not 0 <= wait <= 3600:
        raise Refused(f"{path}: readahead_wait_s must be seconds (0-3600), not {wait!r}")
    return max_bytes, min_free_bytes, float(wait)


def _ready_bytes(ready: str) -> int:
    total = 0
    with os.scandir(ready) as entries:
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # released by the archiver while we counted
                pass
    return total


def check_space(spool: str, name: str, size: int, max_bytes: int, min_free_bytes: int) -> None:
    """Refuse when ``size`` more bytes would break ``max_bytes`` or ``min_free_bytes``."""
    used = _ready_bytes(_join(spool, "ready"))
    retry = "PostgreSQL keeps the segment in pg_wal and retries; is the archiver running?"
    if used + size > max_bytes:
        raise Refused(
            f"spool {spool} is full: ready/ holds {used} bytes and {name} ({size} bytes) would "
            f"exceed max_bytes {max_bytes}; {retry}"
        )
    fs = os.statvfs(spool)
    free = fs.f_bavail * fs.f_frsize
    if free - size < min_free_bytes:
        raise Refused(
            f"spool {spool} is full: its filesystem has {free} bytes free and {name} ({size} "
            f"bytes) would leave less than min_free_bytes {min_free_bytes}; {retry}"
        )


def _same_bytes(fd_a: int, fd_b: int, size: int) -> bool:
    offset = 0
    while offset < size:
        chunk = os.pread(fd_a, CHUNK, offset)
        if not chunk or chunk != os.pread(fd_b, len(chunk), offset):
            return False
        offset += len(chunk)
    return True


def matches_ready(src: int, size: int, target: str) -> bool | None:
    """None if ``target`` does not exist; else whether it holds exactly ``src``'s bytes."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.fstat(fd).st_size == size and _same_bytes(src, fd, size)
    finally:
        os.close(fd)


def _copy(src: int, dst: int, size: int) -> None:
    offset = 0
    try:
        while offset < size:  # in-kernel copy: no trip through this process
            done = os.copy_file_range(src, dst, size - offset, offset, offset)
            if done == 0:
                break
            offset += done
    except OSError:  # not supported between these filesystems: copy by hand, from the start
        offset = 0
        while offset < size:
            chunk = os.pread(src, CHUNK, offset)
            if not chunk:
                break
            offset += os.pwrite(dst, chunk, offset)  # regular files: no short writes
    if offset != size:
        raise OSError(f"source shrank while being copied ({offset} of {size} bytes)")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_copies(tmp_dir: str) -> None:
    """Delete ``.tmp/<file>.<pid>.<random>`` copies whose writer died (SIGKILL, power loss)."""
    for entry in os.listdir(tmp_dir):
        parts = entry.rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) == os.getpid():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            try:  # noqa: SIM105 - importing contextlib would cost start-up time
                os.unlink(_join(tmp_dir, entry))
            except FileNotFoundError:
                pass
        except PermissionError:  # alive, as another user
            pass


def stored_ahead(spool: str, name: str, st: os.stat_result) -> bool | None:
    """Whether ``stored/<name>`` says the store holds exactly the file ``st`` describes.

    None: no marker (yet). True: the marker names this very file (same device, inode, size,
    mtime and ctime), which the archiver read, stored and verified. False: a marker for another
    file of that name, a declined one, or one that cannot be read: do not wait for it.
    """
    try:
        fd = os.open(_join(spool, STORED_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    try:
        raw = os.read(fd, 65536)
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        marker = _load_json(raw.decode("utf-8"))
    except ValueError:  # torn by a power cut (markers are not fsynced), or not ours
        return False
    return (
        isinstance(marker, dict)
        and marker.get("format") == MARKER_FORMAT
        and marker.get("name") == name
        and marker.get("stored") is True
        and all(type(marker.get(field)) is int for field in IDENTITY)
        and all(marker[field] == getattr(st, field) for field in IDENTITY)
    )


def _readahead_held(fd: int) -> bool:
    """True while someone (the archiver) holds the read-ahead lock exclusively."""
    import fcntl  # a small C module; only the waiting path needs it

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def wait_stored(spool: str, name: str, st: os.stat_result, wait_s: float) -> bool:
    """While the archiver reads ahead, wait up to ``wait_s`` for it to store this very file.

    Returns True only when ``stored/<name>`` names this file; False at once when nobody holds
    ``readahead.lock`` (no archiver, or one whose store is failing), when a marker names another
    file or declines this one, when the lock is let go meanwhile, or when time runs out.
    """
    if wait_s <= 0:
        return False
    try:
        lock = os.open(_join(spool, READAHEAD_LOCK), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not _readahead_held(lock):
            return False
        import time

        notify(spool, WAITING + name)  # the archiver may not have listed it yet: look now
        deadline = time.monotonic() + wait_s
        pause = POLL_FIRST_S
        while True:
            found = stored_ahead(spool, name, st)
            if found is not None:
                return found
            if time.monotonic() >= deadline or not _readahead_held(lock):
                return stored_ahead(spool, name, st) is True  # one last look
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX_S)
    finally:
        os.close(lock)


#: What :func:`push` did with the file.
STORED = "stored"  # the store already holds this very file (read ahead): nothing copied
PRESENT = "present"  # ``ready/`` already held an identical copy
COPIED = "copied"  # copied into ``ready/`` now


def push(spool: str, source: str, name: str) -> str:
    """Make ``source`` durable in the store or in ``spool/ready/name``; :data:`STORED`,
    :data:`PRESENT` or :data:`COPIED` says how."""
    ready = _join(spool, "ready")
    tmp_dir = _join(spool, ".tmp")
    target = _join(ready, name)
    conflict = (
        f"REFUSING to overwrite {target}: the spool already holds a DIFFERENT {name}. Two "
        "databases may share this spool, or a timeline was reused; an operator must compare them"
    )
    max_bytes, min_free_bytes, wait_s = read_config(spool)
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(src)
        if stored_ahead(spool, name, st):
            return STORED
        size = st.st_size
        same = matches_ready(src, size, target)
        if same is not None:
            if not same:
                raise Refused(conflict)
            _fsync_dir(ready)  # the earlier run may have died before making its link durable
            return PRESENT
        if wait_stored(spool, name, st, wait_s):
            return STORED
        remove_stale_copies(tmp_dir)
        check_space(spool, name, size, max_bytes, min_free_bytes)
        tmp = _join(tmp_dir, f"{name}.{os.getpid()}.{os.urandom(4).hex()}")
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            try:
                os.fchmod(dst, FILE_MODE)  # PostgreSQL's umask (0077) would hide it from the group
                _copy(src, dst, size)
                os.fsync(dst)
            finally:
                os.close(dst)
            try:
                os.link(tmp, target)
            except FileExistsError:  # another writer got there between our check and now
                same = matches_ready(src, size, target)
                if same is None:
                    raise Refused(
                        f"{target} appeared and vanished while we linked; retry"
                    ) from None
                if not same:
                    raise Refused(conflict) from None
        finally:
            os.unlink(tmp)
        _fsync_dir(ready)
        return COPIED
    finally:
        os.close(src)


def notify(spool: str, name: str) -> None:
    """Send ``name`` to the archiver's datagram socket; no listener, no harm."""
    try:
        import _socket  # the socket module's import costs ~10 ms (enum); this C part does not

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.sendto(name.encode("utf-8"), _join(spool, "notify.sock"))
        finally:
            sock.close()
    except (ImportError, OSError):
        pass


def parse_args(args: list[str]) -> tuple[str, str]:
    """``--spool DIR PATH`` (or ``--spool=DIR PATH``) → ``(DIR, PATH)``."""
    spool = None
    paths = []
    rest = iter(args)
    for arg in rest:
        if arg == "--spool":
            spool = next(rest, None)
        elif arg.startswith("--spool="):
            spool = arg[len("--spool=") :]
        elif arg.startswith("-"):
            raise Refused(f"unknown option {arg}\n{USAGE}", EXIT_USAGE)
        else:
            paths.append(arg)
    if not spool or len(paths) != 1:
        raise Refused(USAGE, EXIT_USAGE)
    return spool, paths[0]


def main(argv: list[str] | None = None) -> int:
    """Run with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(__doc__)
        return EXIT_OK
    name = "?"
    try:
        spool, source = parse_args(args)
        name = source.rpartition("/")[2]
        if not is_wal_file_name(name):
            raise Refused(f"{source!r}: not a WAL file name; refusing to archive it", EXIT_USAGE)
        done = push(spool, source, name)
    except Refused as exc:
        sys.stderr.write(f"walpush: {exc}\n")
        return exc.code
    except OSError as exc:
        sys.stderr.write(f"walpush: {name} not archived ({exc}); PostgreSQL will retry\n")
        return EXIT_NOT_ARCHIVED
    if done != STORED:  # a stored file is the archiver's own doing: nothing to tell it
        notify(spool, name)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
