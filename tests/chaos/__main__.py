"""`python -m tests.chaos` (`make chaos`): the soak, configured from the environment.

    CHAOS_MINUTES      how long to make chaos (default 5)
    CHAOS_RESTORES     restores checked against the ledger afterwards (default 5)
    CHAOS_FAULT_RATE   share of store requests that meet a fault (default 0.15)
    CHAOS_SEED         the random seed (default: fresh, printed), to replay a run's choices
    CHAOS_KEEP=1       keep the state directory (service logs, clusters) in /var/tmp
    CHAOS_NATS         `single` (default: the embedded stack's one nats-server, restarted) or
                       `cluster` (`make chaos-cluster`: three nodes at R3, nodes SIGKILLed)

Exit status 0 only if nothing was lost or duplicated, the catalog has no gap and every restore
showed exactly what the ledger says.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from types import TracebackType

from tests.chaos.soak import Soak, SoakSettings, default_seed


def settings_from_env() -> SoakSettings:
    seed = os.environ.get("CHAOS_SEED")
    return SoakSettings(
        minutes=float(os.environ.get("CHAOS_MINUTES", "5")),
        restores=int(os.environ.get("CHAOS_RESTORES", "5")),
        fault_rate=float(os.environ.get("CHAOS_FAULT_RATE", "0.15")),
        seed=int(seed) if seed else default_seed(),
        keep=os.environ.get("CHAOS_KEEP") == "1",
        cluster=_nats_mode(os.environ.get("CHAOS_NATS", "single")),
    )


def _nats_mode(value: str) -> bool:
    """True for a cluster; a misspelt mode is refused rather than soaked as the default."""
    if value not in ("single", "cluster"):
        raise SystemExit(f"CHAOS_NATS={value!r}: expected 'single' or 'cluster'")
    return value == "cluster"


_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class _OneLine(logging.Formatter):
    """Client libraries log every reconnect attempt with a traceback; during a soak that restarts
    nats-server on purpose, the exception's last line says all there is to say."""

    def formatException(self, ei: _ExcInfo) -> str:
        return super().formatException(ei).strip().splitlines()[-1]

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def main() -> int:
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLine("%(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    settings = settings_from_env()
    print(
        f"chaos soak: {settings.minutes:g} min, {settings.restores} restores, "
        f"fault rate {settings.fault_rate:g}, "
        f"NATS {'cluster' if settings.cluster else 'single'}, CHAOS_SEED={settings.seed}",
        flush=True,
    )
    return asyncio.run(Soak(settings).run())


if __name__ == "__main__":
    sys.exit(main())
