"""`python -m bench [NAME ...]`: run the named benchmarks (all of them when none is named)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

#: Benchmark name -> module with a `main(argv: list[str] | None) -> int`. Imported lazily: one
#: benchmark's dependencies never stop another from running.
BENCHMARKS: dict[str, str] = {
    "archive": "bench.archive.run",
    "catalog": "bench.catalog.run",
    "migrate": "bench.migrate.run",
    "restore": "bench.restore.run",
    "walpush-startup": "bench.walpush_startup",
}


def _entry(name: str) -> Callable[[list[str]], int]:
    module = importlib.import_module(BENCHMARKS[name])
    entry: Callable[[list[str]], int] = module.main
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    status = 0
    for name in args.names or list(BENCHMARKS):
        status = max(status, _entry(name)([]))
    return status


if __name__ == "__main__":
    sys.exit(main())
