"""walpush's cost per segment, against the bare interpreter start-up it cannot avoid.

PostgreSQL runs ``archive_command`` once per segment, one at a time, so walpush's wall time bounds
archiving throughput. Measured here, interleaved in one run with the same system interpreter:

- ``python3 -I -S walpush.py --spool <tmp spool> <16 MiB segment>`` (a full push: copy, two
  fsyncs, the notification attempt; the copy is released between runs, untimed), and
- ``python3 -I -S -c pass``, the baseline.

Prints ``walpush_ms_p50=``, ``python_startup_ms_p50=`` and ``walpush_overhead_ratio=`` (the ratio
of the two medians). The segment is in the page cache (a warm-up run reads it first), as
PostgreSQL's just-written segment is; fsync time depends on the disk under ``--dir``.

    python -m bench.walpush_startup [--runs N] [--segment-mib M] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.engines.postgres.oscmd import OsUser, system_python
from services.engines.postgres.spool import WALPUSH_SOURCE, Spool

SEGMENT = "000000010000000000000001"


def _timed_ms(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def measure(runs: int, segment_bytes: int, directory: str | None) -> dict[str, float]:
    """Median wall times (ms) of ``runs`` pushes and ``runs`` bare starts, interleaved."""
    python = str(system_python(OsUser.current()))
    with tempfile.TemporaryDirectory(prefix="tidemark-bench-walpush-", dir=directory) as top:
        wal_dir = Path(top) / "pg_wal"
        wal_dir.mkdir()
        segment = wal_dir / SEGMENT
        segment.write_bytes(os.urandom(segment_bytes))
        spool = Spool(Path(top) / "spool")
        spool.init("bench", min_free_bytes=0)
        push = [python, "-I", "-S", str(WALPUSH_SOURCE), "--spool", str(spool.path), str(segment)]
        bare = [python, "-I", "-S", "-c", "pass"]

        _timed_ms(bare)  # warm-up: interpreter and segment in the page cache
        _timed_ms(push)
        spool.release(SEGMENT)
        pushes: list[float] = []
        starts: list[float] = []
        for _ in range(runs):
            starts.append(_timed_ms(bare))
            pushes.append(_timed_ms(push))
            spool.release(SEGMENT)
    walpush_ms = statistics.median(pushes)
    startup_ms = statistics.median(starts)
    return {
        "walpush_ms_p50": walpush_ms,
        "python_startup_ms_p50": startup_ms,
        "walpush_overhead_ratio": walpush_ms / startup_ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.walpush_startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=30, help="runs of each command (default 30)")
    parser.add_argument("--segment-mib", type=int, default=16, help="segment size (default 16)")
    parser.add_argument("--dir", default=None, help="where the temporary spool goes")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.segment_mib < 1:
        parser.error("--runs and --segment-mib must be positive")
    figures = measure(args.runs, args.segment_mib << 20, args.dir)
    print(f"# walpush: {args.runs} runs, {args.segment_mib} MiB segment, same interpreter")
    for key, value in figures.items():
        print(f"{key}={value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
