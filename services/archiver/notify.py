"""Wake-ups from wal-push: the spool's `notify.sock` datagrams, read on the event loop.

The socket is bound by the source (`Spool.bind_notify_socket`); wal-push sends each file name
after its rename (or, reading ahead, before it waits), best effort (a full buffer or an absent
archiver just drops it). A datagram only wakes the streamer early: the periodic rescan of the
source is what guarantees nothing is missed, so the content of a datagram is never trusted
beyond "look now" — or "no need to look" when every name it carries is one the streamer
already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("tidemark.archiver")

#: Datagrams read per wake-up; the rest stay queued in the socket for the next one.
_BURST = 64


class NotifyListener:
    """Call `on_notify(names)` whenever datagrams arrive on `sock` (which this listener now
    owns); `names` are the datagrams' texts (undecodable ones as "")."""

    def __init__(self, sock: socket.socket, on_notify: Callable[[list[str]], None]) -> None:
        self._sock: socket.socket | None = sock
        self._on_notify = on_notify
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        if self._sock is None:
            return
        names: list[str] = []
        for _ in range(_BURST):
            try:
                data = self._sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # never let a socket hiccup stop archiving
                log.warning("notify socket: %s", exc)
                names.append("")  # something arrived, or may have: look
                break
            names.append(data.decode("utf-8", errors="replace") if data else "")
        self._on_notify(names)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
