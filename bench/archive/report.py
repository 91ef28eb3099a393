"""The figures: medians over rounds, ratios paired within a round, printed as `name=value` last.

A ratio is computed per round from two runs made minutes apart, then the median of those is
taken: pairing cancels most of the disk's slow spells, which hit both runs of a round alike.
A figure that cannot be measured prints `n/a`, after a line saying exactly why.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.archive.lag import LagResult
from bench.archive.segments import MIXES, Corpus
from bench.archive.settings import BenchSettings

#: What the issue asks of ours, by final line: (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "archive_lag_p99_s": ("<=", 1.0),
    "throughput_ratio_vs_pgbackrest": (">=", 1.0),
    "throughput_random_ratio_vs_pgbackrest": (">=", 1.0),
    "throughput_ratio_vs_barman_cloud": (">=", 3.0),
    "fraction_of_emulator_limit": (">=", 0.8),
    "fraction_of_copy_limit": (">=", 0.7),
}

LABELS = {
    "ours": "ours",
    "ours_gcs": "ours",
    "lag_ours": "ours",
    "pgbackrest": "pgbackrest",
    "lag_pgbackrest": "pgbackrest",
    "barman_cloud": "barman-cloud",
    "copy_limit": "copy limit",
    "emulator_limit": "emulator limit",
}


@dataclass
class Results:
    rounds: int
    drains: dict[tuple[str, str], list[float | None]] = field(default_factory=dict)
    lags: dict[str, list[LagResult | None]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def add_drain(self, key: str, mix: str, round_no: int, seconds: float) -> None:
        self.drains.setdefault((key, mix), [None] * self.rounds)[round_no] = seconds

    def add_lag(self, key: str, round_no: int, result: LagResult) -> None:
        self.lags.setdefault(key, [None] * self.rounds)[round_no] = result

    def mark_unavailable(self, key: str, reason: str) -> None:
        self.unavailable.setdefault(key, reason)

    def add_failure(self, key: str, reason: str) -> None:
        self.failures.setdefault(key, []).append(reason)

    def seconds(self, key: str, mix: str) -> list[float | None]:
        return self.drains.get((key, mix), [None] * self.rounds)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class Figures:
    def __init__(self, results: Results, corpus: Corpus) -> None:
        self.results = results
        self.mib = {mix: corpus.sets[mix].mib for mix in MIXES}

    def rates(self, key: str, mix: str) -> list[float]:
        return [self.mib[mix] / s for s in self.results.seconds(key, mix) if s]

    def throughput(self, key: str, mix: str) -> float | None:
        return _median(self.rates(key, mix))

    def ratio(self, ours: str, theirs: str, mix: str) -> float | None:
        """Median over rounds of ours' throughput / theirs', both from the same round."""
        pairs = zip(self.results.seconds(ours, mix), self.results.seconds(theirs, mix), strict=True)
        return _median([t / o for o, t in pairs if o and t])

    def lag(self, key: str, pick: Callable[[LagResult], float]) -> float | None:
        return _median([pick(r) for r in self.results.lags.get(key, []) if r is not None])


def final_lines(figures: Figures) -> list[tuple[str, float | None, str]]:
    """(name, value, format) of every line the issue asks for, in its order."""
    return [
        ("archive_lag_p50_s", figures.lag("ours", lambda r: r.p50), ".3f"),
        ("archive_lag_p99_s", figures.lag("ours", lambda r: r.p99), ".3f"),
        ("throughput_mib_s", figures.throughput("ours", "pgbench"), ".1f"),
        ("throughput_random_mib_s", figures.throughput("ours", "random"), ".1f"),
        ("throughput_ratio_vs_pgbackrest", figures.ratio("ours", "pgbackrest", "pgbench"), ".2f"),
        (
            "throughput_random_ratio_vs_pgbackrest",
            figures.ratio("ours", "pgbackrest", "random"),
            ".2f",
        ),
        (
            "throughput_ratio_vs_barman_cloud",
            figures.ratio("ours_gcs", "barman_cloud", "pgbench"),
            ".2f",
        ),
        (
            "fraction_of_emulator_limit",
            figures.ratio("ours_gcs", "emulator_limit", "pgbench"),
            ".2f",
        ),
        ("fraction_of_copy_limit", figures.ratio("ours", "copy_limit", "pgbench"), ".2f"),
    ]


def _rounds_text(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def print_report(
    settings: BenchSettings, corpus: Corpus, results: Results, notes: dict[str, str]
) -> None:
    figures = Figures(results, corpus)
    print()
    print(f"archive benchmark: {settings.rounds} round(s), {os.cpu_count()} cores, "
          f"compression {settings.compression}")  # fmt: skip
    for mix in MIXES:
        segments = corpus.sets[mix]
        print(f"segments {mix}: {len(segments.paths)} x 16 MiB = {segments.mib:.0f} MiB")
    for name, note in sorted(notes.items()):
        print(f"{name}: {note}")
    for (key, mix), _ in sorted(results.drains.items()):
        rates = figures.rates(key, mix)
        median = _median(rates)
        if median is not None:
            print(f"measured {key} {mix}: {median:.1f} MiB/s (rounds: {_rounds_text(rates)})")
    for key, lags in sorted(results.lags.items()):
        done = [r for r in lags if r is not None]
        if done:
            p50 = statistics.median(r.p50 for r in done)
            p99 = statistics.median(r.p99 for r in done)
            print(f"measured {key} lag: p50 {p50:.3f} s, p99 {p99:.3f} s (median of rounds)")
    lines = final_lines(figures)
    for name, value, _ in lines:
        if name in TARGETS and value is not None:
            op, bound = TARGETS[name]
            met = value <= bound if op == "<=" else value >= bound
            print(f"target {name} {op} {bound}: {'met' if met else 'NOT met'}")
    said: set[tuple[str, str]] = set()
    for key, reason in sorted(results.unavailable.items()):
        said_key = (LABELS.get(key, key), reason)
        if said_key not in said:
            said.add(said_key)
            print(f"{said_key[0]}: not available ({reason})")
    for key, reasons in sorted(results.failures.items()):
        for reason in reasons:
            print(f"{LABELS.get(key, key)} ({key}) failed: {reason}")
    for name, value, fmt in lines:
        print(f"{name}={'n/a' if value is None else format(value, fmt)}")
