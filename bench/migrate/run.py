"""`python -m bench migrate`: physical-stream (and physical-archive, when its engine steps exist)
migrations of a pgbench database under a steady write load, against `pg_basebackup`; then the
same database upgraded into PostgreSQL 18 by logical-upgrade, against `pg_upgrade --copy` and
`pg_dump` + `pg_restore` by hand (and our `dump` method, when its engine steps exist).

    load the source once ─▶ for each round: [load] baseline pg_basebackup ─▶ build_standby ─▶
    catch up ─▶ cutover (timed from the fence's start to the first write on the target) ─▶
    ledger checked ─▶ target dropped, source unfenced ─▶ (physical-archive likewise) ─▶
    logical-upgrade, pg_upgrade, pg_dump/pg_restore, dump (in a rotating order) ─▶ report

What is measured and how: `rounds.py` (the round), `downtime.py` (downtime and the ledger),
`source.py` (the data and the load), `upgrade.py` (the upgrade part of a round),
docs/benchmarks.md (`bench-migrate`).
"""

from __future__ import annotations

import contextlib
import os
import sys

from bench.migrate import archive_method, dump_method, newer
from bench.migrate.report import Results, print_report
from bench.migrate.rounds import STREAM, Round, log, stream_run, time_baseline
from bench.migrate.settings import MigrateBenchSettings, load_settings
from bench.migrate.source import MIB, loaded_source
from bench.migrate.upgrade import upgrade_round
from tests.fixtures.postgres import _subreaper


def run(settings: MigrateBenchSettings) -> Results:
    unavailable = archive_method.unavailable_reason()
    if unavailable is not None:
        log(f"physical-archive: {unavailable}")
    no_upgrade = newer.unavailable_reason()
    if no_upgrade is not None:
        log(f"logical-upgrade and the upgrade baselines: {no_upgrade}")
    no_dump = dump_method.unavailable_reason() if no_upgrade is None else no_upgrade
    if no_dump is not None:
        log(f"dump: {no_dump}")
    rounds: list[Round] = []
    log(f"loading pgbench scale {settings.scale}")
    with loaded_source(settings) as source, contextlib.ExitStack() as stack:
        log(f"  {source.size_bytes / MIB:.0f} MiB in {source.load_seconds:.0f} s")
        archiving = None
        if unavailable is None:
            timeout = settings.archive_timeout_s
            log(f"archiving the source through Tidemark (archive_timeout {timeout} s)")
            archiving = stack.enter_context(archive_method.archiving_source(source, settings))
        for number in range(1, settings.rounds + 1):
            if archiving is not None:
                waited = archive_method.wait_drained(source, archiving)
                log(f"round {number}: the archive backlog drained in {waited:.1f} s")
            load_average = os.getloadavg()[0]
            log(f"round {number} of {settings.rounds} (load average {load_average:.2f})")
            log(f"  {STREAM}")
            baseline_s, stream = stream_run(source, settings, number, lambda: time_baseline(source))
            runs = {stream.method: stream}
            if archiving is not None:
                log(f"  {archive_method.ARCHIVE}")
                archived = archive_method.archive_run(source, archiving, settings, number)
                runs[archived.method] = archived
            upgraded = None
            if no_upgrade is None:
                upgraded = upgrade_round(source, settings, number, dump_measured=no_dump is None)
            rounds.append(Round(number, load_average, baseline_s, runs, upgraded))
        return Results(
            settings,
            source.size_bytes,
            source.load_seconds,
            rounds,
            unavailable,
            upgrade_unavailable=no_upgrade,
            dump_unavailable=no_dump,
        )


def main(argv: list[str] | None = None) -> int:
    """Run the migration benchmark (`--help` for its settings)."""
    settings = load_settings(argv)
    log(
        f"migration benchmark: pgbench scale {settings.scale}, {settings.rounds} rounds, "
        f"load pgbench -R {settings.load_tps} + ledger writer"
    )
    # pg_ctl start (build_standby, unfence) orphans the postmasters it forks; as their
    # subreaper we reap them, where this machine's PID 1 may never do it.
    with _subreaper():
        results = run(settings)
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
