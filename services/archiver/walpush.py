#!/usr/bin/env python3
"""walpush: hand one file from PostgreSQL's ``archive_command`` to a Tidemark spool.

    archive_command = '/usr/bin/python3 -I -S /opt/tidemark/bin/walpush --spool /srv/spool/db %p'

PostgreSQL runs this as the database's OS user, once per file, so it uses the standard library
only (no Tidemark package, no virtualenv) and keeps start-up short. It copies ``%p`` into
``<spool>/.tmp/``, fsyncs the copy, links it into ``<spool>/ready/`` (a link, unlike a rename,
never replaces an existing file), fsyncs ``ready/``, then tells the archiver through
``<spool>/notify.sock``, best effort. Once this exits 0 PostgreSQL may recycle its segment: the
spool holds the durable copy, whether or not the archiver is running.

Exit status (PostgreSQL keeps its file and retries after any non-zero status):

    0  archived, or ``ready/`` already holds a byte-identical copy (a re-archive after a crash)
    1  not archived: an I/O error, the spool is full or not initialised, or a DIFFERENT file of
       the same name is already in ``ready/`` (never overwritten: someone must look)
    2  usage: bad arguments, or a name PostgreSQL does not archive

The spool layout and ``spool.json`` are described in ``docs/archiving-postgres.md``; the
archiver's side is ``services/archiver/spool.py``.
"""

from __future__ import annotations

import os
import sys

EXIT_OK = 0
EXIT_NOT_ARCHIVED = 1
EXIT_USAGE = 2

SPOOL_FORMAT = 1
DEFAULT_MAX_BYTES = 8 << 30
DEFAULT_MIN_FREE_BYTES = 256 << 20
FILE_MODE = 0o640  # the archiver reads through the spool's group
CHUNK = 1 << 20

USAGE = "usage: walpush --spool DIR PATH   (in archive_command: --spool DIR %p)"
_HEX = frozenset("0123456789ABCDEF")


class Refused(Exception):
    """The file was not archived; the message says why (PostgreSQL logs our stderr)."""

    def __init__(self, message: str, code: int = EXIT_NOT_ARCHIVED) -> None:
        super().__init__(message)
        self.code = code


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


def read_limits(spool: str) -> tuple[int, int]:
    """``(max_bytes, min_free_bytes)`` from ``spool.json``, or the defaults without one."""
    if not os.path.isdir(os.path.join(spool, "ready")):
        raise Refused(f"{spool} is not an initialised spool (it has no ready/ directory)")
    path = os.path.join(spool, "spool.json")
    try:
        with open(path, "rb") as handle:
            config = _load_json(handle.read().decode("utf-8"))
    except FileNotFoundError:
        return DEFAULT_MAX_BYTES, DEFAULT_MIN_FREE_BYTES
    except ValueError as exc:  # also UnicodeDecodeError
        raise Refused(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != SPOOL_FORMAT:
        raise Refused(f"{path}: not a format {SPOOL_FORMAT} spool configuration")
    max_bytes = config.get("max_bytes", DEFAULT_MAX_BYTES)
    min_free_bytes = config.get("min_free_bytes", DEFAULT_MIN_FREE_BYTES)
    for key, value in (("max_bytes", max_bytes), ("min_free_bytes", min_free_bytes)):
        if type(value) is not int or value < 0:
            raise Refused(f"{path}: {key} must be a non-negative integer, not {value!r}")
    return max_bytes, min_free_bytes


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
    used = _ready_bytes(os.path.join(spool, "ready"))
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
                os.unlink(os.path.join(tmp_dir, entry))
            except FileNotFoundError:
                pass
        except PermissionError:  # alive, as another user
            pass


def push(spool: str, source: str, name: str) -> bool:
    """Put ``source`` into ``spool/ready/name`` durably. False if it was already there."""
    ready = os.path.join(spool, "ready")
    tmp_dir = os.path.join(spool, ".tmp")
    target = os.path.join(ready, name)
    conflict = (
        f"REFUSING to overwrite {target}: the spool already holds a DIFFERENT {name}. Two "
        "databases may share this spool, or a timeline was reused; an operator must compare them"
    )
    max_bytes, min_free_bytes = read_limits(spool)
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        same = matches_ready(src, size, target)
        if same is not None:
            if not same:
                raise Refused(conflict)
            _fsync_dir(ready)  # the earlier run may have died before making its link durable
            return False
        remove_stale_copies(tmp_dir)
        check_space(spool, name, size, max_bytes, min_free_bytes)
        tmp = os.path.join(tmp_dir, f"{name}.{os.getpid()}.{os.urandom(4).hex()}")
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
        return True
    finally:
        os.close(src)


def notify(spool: str, name: str) -> None:
    """Send ``name`` to the archiver's datagram socket; no listener, no harm."""
    try:
        import _socket  # the socket module's import costs ~10 ms (enum); this C part does not

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.sendto(name.encode("utf-8"), os.path.join(spool, "notify.sock"))
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
        name = os.path.basename(source)
        if not is_wal_file_name(name):
            raise Refused(f"{source!r}: not a WAL file name; refusing to archive it", EXIT_USAGE)
        push(spool, source, name)
    except Refused as exc:
        sys.stderr.write(f"walpush: {exc}\n")
        return exc.code
    except OSError as exc:
        sys.stderr.write(f"walpush: {name} not archived ({exc}); PostgreSQL will retry\n")
        return EXIT_NOT_ARCHIVED
    notify(spool, name)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
