"""The soak's PostgreSQL load: the demo's Ledger in a thread, and a WAL switch every few seconds.

Each commit is a ledger entry (exact commit time, row count, checksum), so any restore target
between two commits has one right answer. The switches keep closing segments, so the archiver
always has something in flight when a fault hits.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from schemas import Lsn
from services.demo.ledger import Ledger
from tests.e2e.pitr_stack import Protected


@dataclass
class Writer:
    db: Protected
    ledger: Ledger
    rng: random.Random
    pause_s: tuple[float, float] = (0.1, 0.2)
    switch_every_s: tuple[float, float] = (3.0, 5.0)
    switches: list[Lsn] = field(default_factory=list)
    """The position just before each switch: each lies in a segment PostgreSQL then closed."""
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        next_switch = time.monotonic() + self.rng.uniform(*self.switch_every_s)
        try:
            while not self._stop.is_set():
                self.ledger.write(rows=self.rng.randint(1, 5))
                if time.monotonic() >= next_switch:
                    self.switches.append(self.db.switch_wal())
                    next_switch = time.monotonic() + self.rng.uniform(*self.switch_every_s)
                self._stop.wait(self.rng.uniform(*self.pause_s))
        except BaseException as exc:  # the soak reports it; a silent writer would prove nothing
            self.error = exc
