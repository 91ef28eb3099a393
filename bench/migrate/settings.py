"""What the migration benchmark is asked to do: `TIDEMARK_BENCH_MIGRATE_*` environment variables
(what `make bench-migrate` passes on), overridden by `--scale`, `--rounds`… when run directly
(`python -m bench.migrate.run --scale 4 --rounds 1`). Every knob has a default that reproduces
the published figures; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

_ENV = "TIDEMARK_BENCH_MIGRATE_"


@dataclass(frozen=True)
class MigrateBenchSettings:
    scale: int
    """`pgbench -i -s`: 68 is ~1 GiB of tables and indexes (~15 MiB per unit)."""
    rounds: int
    """Rounds, each a baseline copy and one migration per method; figures are medians."""
    load_tps: int
    """The steady TPC-B load on the source during every round (`pgbench -c 2 -R`)."""
    steady_s: float
    """Seconds the caught-up standby streams under the load before the cutover starts."""
    shared_buffers: str
    """The source's (and so the target's): what the fence's shutdown checkpoint may flush."""
    archive_timeout_s: int
    """The source's `archive_timeout` while it archives (physical-archive measured): how long
    a segment may stay incomplete, so unarchived (it bounds that method's lag, not its
    cutover, whose fence closes the last segment itself)."""


@dataclass(frozen=True)
class _Knob:
    name: str
    default: int | float | str
    help: str

    @property
    def env(self) -> str:
        return _ENV + self.name.upper()


_KNOBS = (
    _Knob("scale", 68, "pgbench scale of the source (68: ~1 GiB)"),
    _Knob("rounds", 3, "rounds; figures are medians over them"),
    _Knob("load_tps", 200, "pgbench -R: the steady write load, transactions per second"),
    _Knob("steady_s", 5.0, "seconds streaming under load between catch-up and cutover"),
    _Knob("shared_buffers", "128MB", "the source's shared_buffers"),
    _Knob("archive_timeout_s", 5, "the source's archive_timeout while it archives"),
)


def load_settings(argv: Sequence[str] | None = None) -> MigrateBenchSettings:
    parser = argparse.ArgumentParser(prog="python -m bench.migrate.run")
    for knob in _KNOBS:
        raw = os.environ.get(knob.env, "")
        default = type(knob.default)(raw) if raw else knob.default
        parser.add_argument(
            "--" + knob.name.replace("_", "-"),
            type=type(knob.default),
            default=default,
            help=f"{knob.help} (default {knob.default}; env {knob.env})",
        )
    args = parser.parse_args(argv)
    settings = MigrateBenchSettings(**vars(args))
    for name in ("scale", "rounds", "load_tps", "archive_timeout_s"):
        if getattr(settings, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if settings.steady_s < 0:
        parser.error("--steady-s must not be negative")
    return settings
