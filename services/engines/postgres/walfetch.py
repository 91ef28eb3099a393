#!/usr/bin/env python3
"""wal-fetch: PostgreSQL's ``restore_command``, a thin client of the executor's fetch server.

    restore_command = '/opt/tidemark/bin/wal-fetch --socket /tmp/tm-fetch-x/fetch.sock %f %p'

PostgreSQL runs this as the database's OS user, once per file it wants, and waits: so it uses the
standard library only (installed with a system interpreter by ``oscmd.install_user_tool``) and
starts in a few milliseconds — the C socket module, ``posix`` instead of ``os``. The fetching,
prefetching and verifying happen in the executor (``fetchserver.py``, which documents the
protocol); this asks for ``%f`` on the server's unix socket. The usual answer (READY) names a
verified, fsynced file the server has already put on ``%p``'s filesystem: it is renamed to
``%p``, and nothing more is written. Otherwise (OK) the bytes come through the socket into a
temporary file beside ``%p``, which is fsynced and renamed into place; so is a READY file that
``rename()`` cannot move (another filesystem after all). Either way PostgreSQL never reads a
partial file.

The socket is ``--socket PATH``, or ``$TIDEMARK_WALFETCH_SOCKET``. With
``$TIDEMARK_WALFETCH_DEBUG`` set (in the server's environment), each call writes one line to
stderr, which PostgreSQL logs: the file, how it came (``renamed``, ``copied``, ``streamed``), its
size and the seconds from the request to the file in place.

Exit status (PostgreSQL treats every non-zero status below 126 as "no such file"):

    0  the file is at ``%p``
    1  MISSING: the archive does not hold it (end of WAL, or a timeline id still free)
    2  an error, described on stderr (which PostgreSQL logs): no server, a store error, a short
       transfer, a bad name. The server counts its errors, and the restore fails when recovery
       may have ended on one.
"""

from __future__ import annotations

import _socket as socket_impl  # the C module: ``socket`` would import enum and selectors
import posix as os  # ``os`` itself imports abc, stat, posixpath...: most of our start-up
import sys
import time  # built in: no start-up cost

EXIT_OK = 0
EXIT_MISSING = 1
EXIT_ERROR = 2

SOCKET_ENV = "TIDEMARK_WALFETCH_SOCKET"
DEBUG_ENV = "TIDEMARK_WALFETCH_DEBUG"
EXDEV = 18  # rename() across filesystems (Linux); ``errno`` would be one more import
TIMEOUT_S = 600.0
"""How long to wait for the server (which may be downloading the file) before giving up."""
MAX_HEADER = 512
CHUNK = 1 << 20
USAGE = "usage: wal-fetch [--socket PATH] WALFILE DEST   (in restore_command: %f %p)"
_NAME_CHARS = frozenset("0123456789ABCDEF.abcdefghijklmnopqrstuvwxyz")


class Failed(Exception):
    """Not fetched; the message says why and ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def parse_args(argv: list[str]) -> tuple[str, str, str]:
    """``(socket_path, walfile, dest)`` from the command line (and the environment)."""
    sock = ""
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--socket" and i + 1 < len(argv):
            sock = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--socket="):
            sock = arg[len("--socket=") :]
        else:
            rest.append(arg)
        i += 1
    if len(rest) != 2:
        raise Failed(USAGE)
    if not sock:
        value = os.environ.get(SOCKET_ENV.encode())
        sock = value.decode() if value else ""
    if not sock:
        raise Failed(f"no fetch server socket: pass --socket or set {SOCKET_ENV}")
    name, dest = rest
    # A name goes into a one-line request: anything but a WAL file name is refused here.
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise Failed(f"{name!r} is not a WAL file name")
    return sock, name, dest


def _read_header(conn: socket_impl.socket) -> tuple[bytes, bytes]:
    """The answer's first line and whatever bytes arrived after it."""
    buffer = b""
    while b"\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            raise Failed("the fetch server closed the connection without an answer")
        buffer += chunk
        if b"\n" not in buffer and len(buffer) > MAX_HEADER:
            raise Failed("the fetch server's answer has no header line")
    header, _, rest = buffer.partition(b"\n")
    return header, rest


def _dirname(path: str) -> str:
    head, sep, _ = path.rpartition("/")
    return (head or "/") if sep else "."


def _receive(conn: socket_impl.socket, first: bytes, size: int, dest: str, name: str) -> None:
    """Write ``size`` bytes (``first`` and then the socket's) to ``dest``, atomically."""
    _write_atomically(conn, first, size, dest, name)


def _take(path: str, size: int, dest: str, name: str) -> str:
    """Move the server's verified file at ``path`` to ``dest``; how it went (for the debug line)."""
    try:
        found = os.stat(path).st_size
    except OSError as exc:
        raise Failed(f"{name}: the server's file {path} is not there: {exc}") from None
    if found != size:
        raise Failed(f"{name}: the server's file {path} is {found} bytes, not {size}")
    try:
        # No fsync: the server synced the file, and PostgreSQL syncs pg_wal itself when it keeps
        # the segment (durable_rename), so both would be paid on the replay's critical path twice.
        os.rename(path, dest)
        return "renamed"
    except OSError as exc:
        if exc.errno != EXDEV:
            raise Failed(f"{name}: cannot move {path} to {dest}: {exc}") from None
    fd = os.open(path, os.O_RDONLY)
    try:
        _write_atomically(fd, b"", size, dest, name)
    finally:
        os.close(fd)
    _unlink_quietly(path)
    return "copied"


def _write_atomically(
    source: socket_impl.socket | int, first: bytes, size: int, dest: str, name: str
) -> None:
    """Write ``size`` bytes (``first``, then from the socket or file descriptor ``source``)
    beside ``dest``, fsync them and rename them to ``dest``."""
    directory = _dirname(dest)
    tmp = f"{directory}/.{name}.wal-fetch.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            received = len(first)
            if received > size:
                raise Failed(f"{name}: the server sent more than the {size} bytes announced")
            if first:
                os.write(fd, first)
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while received < size:
                want = min(CHUNK, size - received)
                if isinstance(source, int):
                    n = os.readv(source, [view[:want]])
                else:
                    n = source.recv_into(view, want)
                if n == 0:
                    ended = "file ends" if isinstance(source, int) else "connection closed"
                    raise Failed(f"{name}: {ended} after {received} of {size} bytes")
                written = 0
                while written < n:
                    written += os.write(fd, view[written:n])
                received += n
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    try:  # make the rename durable too; PostgreSQL fsyncs pg_wal itself later, best effort here
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:  # already gone, or never created: nothing to clean up
        return


def fetch(sock: str, name: str, dest: str, timeout: float = TIMEOUT_S) -> int:
    """Ask the server at ``sock`` for ``name`` and put it at ``dest``; returns the exit status."""
    began = time.monotonic()
    conn = socket_impl.socket(socket_impl.AF_UNIX, socket_impl.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        try:
            conn.connect(sock)
        except OSError as exc:
            raise Failed(f"cannot reach the fetch server at {sock}: {exc}") from None
        conn.sendall(b"FETCH " + name.encode("ascii") + b"\n")
        header, rest = _read_header(conn)
        if header == b"MISSING":
            return EXIT_MISSING
        if header.startswith(b"ERROR"):
            reason = header[6:].decode("utf-8", "replace") or "unspecified"
            raise Failed(f"{name}: the fetch server could not fetch it: {reason}")
        if header.startswith(b"READY "):
            size_text, _, path = header[6:].decode("utf-8", "replace").partition(" ")
            size = _size(size_text, header, name)
            if not path.startswith("/") or rest:
                raise Failed(f"{name}: unexpected answer {header[:80]!r}")
            how = _take(path, size, dest, name)
        elif header.startswith(b"OK "):
            size = _size(header[3:].decode("ascii", "replace"), header, name)
            _receive(conn, rest, size, dest, name)
            how = "streamed"
        else:
            raise Failed(f"{name}: unexpected answer {header[:80]!r}")
        if os.environ.get(DEBUG_ENV.encode()):
            took = time.monotonic() - began
            sys.stderr.write(f"wal-fetch: {name} {how}, {size} bytes in {took:.3f} s\n")
        return EXIT_OK
    except OSError as exc:  # timeouts and resets while talking
        raise Failed(f"{name}: {exc}") from None
    finally:
        conn.close()


def _size(text: str, header: bytes, name: str) -> int:
    try:
        size = int(text)
    except ValueError:
        raise Failed(f"{name}: unexpected answer {header[:80]!r}") from None
    if size < 0:
        raise Failed(f"{name}: unexpected answer {header[:80]!r}")
    return size


def main(argv: list[str] | None = None) -> int:
    try:
        sock, name, dest = parse_args(sys.argv[1:] if argv is None else argv)
        return fetch(sock, name, dest)
    except Failed as exc:
        sys.stderr.write(f"wal-fetch: {exc}\n")
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
