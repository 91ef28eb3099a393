"""The queries' brute-force baseline: answer from scratch, scanning every log.

An index that kept nothing between questions would, for each one, build every thread's coverage
from all the logs and then answer: here, a fresh `History` fed the workload's logs and bases,
then asked for the windows (or the window, best base and logs of a restore plan). Timed in this
process, without transport or JSON, so the catalog's answer over NATS is compared with a
baseline that is, if anything, flattered.
"""

from __future__ import annotations

import random
import statistics
import time

from bench.catalog.workload import INCARNATION, Workload
from services.catalog.history import BaseEntry, History, LogEntry


def _history(logs: list[LogEntry], bases: list[BaseEntry]) -> History:
    history = History()
    for log in logs:
        history.add_log(log)
    for base in bases:
        history.add_base(base)
    return history


def rescan_window_ms(logs: list[LogEntry], bases: list[BaseEntry]) -> float:
    started = time.perf_counter()
    windows = _history(logs, bases).windows(INCARNATION.key)
    elapsed = (time.perf_counter() - started) * 1000
    if not windows:
        raise RuntimeError("the rescan found no restorable window")
    return elapsed


def rescan_plan_ms(
    logs: list[LogEntry], bases: list[BaseEntry], workload: Workload, rng: random.Random
) -> float:
    start, end = workload.window()
    target = rng.randrange(start + 1, end)
    started = time.perf_counter()
    history = _history(logs, bases)
    verdict = history.check(INCARNATION.key, target)
    plan = history.logs_for(verdict.base or "", INCARNATION.key, target)
    elapsed = (time.perf_counter() - started) * 1000
    if not plan:
        raise RuntimeError(f"the rescan planned nothing to {target}")
    return elapsed


def measure_rescans(workload: Workload, runs: int) -> tuple[float, float]:
    """Median milliseconds of a rescanned window query and restore plan."""
    logs = list(workload.entries())
    bases = workload.bases()
    rng = random.Random(7)  # reproducible targets
    windows = [rescan_window_ms(logs, bases) for _ in range(runs)]
    plans = [rescan_plan_ms(logs, bases, workload, rng) for _ in range(runs)]
    return statistics.median(windows), statistics.median(plans)
