"""A round's upgrade part: the source into PostgreSQL 18 by logical-upgrade under the load, and
in the same round by the tools a DBA would use instead — `pg_upgrade --copy`, `pg_dump` +
`pg_restore` by hand — and by our `dump` method when its engine steps exist.

The four run one after the other, in an order rotated every round (a slow spell of the disk
does not always land on the same one), each on its own fresh 18 cluster, each after a `sync`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.migrate import dump_method
from bench.migrate.logical_method import LOGICAL, LogicalRun, logical_run
from bench.migrate.rounds import log
from bench.migrate.settings import MigrateBenchSettings
from bench.migrate.source import Source
from bench.migrate.upgrade_baselines import DumpRestore, time_dump_restore, time_pg_upgrade

PG_UPGRADE = "pg_upgrade --copy"
BY_HAND = "pg_dump + pg_restore by hand"
DUMP = "dump"


@dataclass(frozen=True)
class UpgradeRound:
    logical: LogicalRun
    pg_upgrade_s: float
    by_hand: DumpRestore
    dump: DumpRestore | None
    """Our dump method (None: not measured, see `dump_method.unavailable_reason`)."""
    order: tuple[str, ...]


@dataclass
class _Measured:
    logical: LogicalRun | None = None
    pg_upgrade_s: float | None = None
    by_hand: DumpRestore | None = None
    dump: DumpRestore | None = None


def upgrade_round(
    source: Source, settings: MigrateBenchSettings, round_no: int, *, dump_measured: bool
) -> UpgradeRound:
    got = _Measured()

    def _logical() -> None:
        got.logical = logical_run(source, settings, round_no)

    def _pg_upgrade() -> None:
        got.pg_upgrade_s = seconds = time_pg_upgrade(source, settings)
        log(f"  {PG_UPGRADE}: {seconds:.2f} s")

    def _by_hand() -> None:
        got.by_hand = times = time_dump_restore(source, settings)
        log(f"  {BY_HAND}: pg_dump {times.dump_s:.2f} s, pg_restore {times.restore_s:.2f} s")

    def _dump() -> None:
        got.dump = times = dump_method.time_dump_method(source, settings)
        log(
            f"  {DUMP}: dump_to_store {times.dump_s:.2f} s, restore_from_store "
            f"{times.restore_s:.2f} s (the source's fingerprint "
            f"{times.source_fingerprint_s:.2f} s, read while the files upload; the target's "
            f"{times.target_fingerprint_s:.2f} s)"
        )

    steps: list[tuple[str, Callable[[], None]]] = [
        (LOGICAL, _logical),
        (PG_UPGRADE, _pg_upgrade),
        (BY_HAND, _by_hand),
    ]
    if dump_measured:
        steps.append((DUMP, _dump))
    turn = (round_no - 1) % len(steps)
    steps = steps[turn:] + steps[:turn]
    for name, step in steps:
        log(f"  {name}")
        step()
    assert got.logical is not None
    assert got.pg_upgrade_s is not None
    assert got.by_hand is not None
    order = tuple(name for name, _ in steps)
    return UpgradeRound(got.logical, got.pg_upgrade_s, got.by_hand, got.dump, order)
