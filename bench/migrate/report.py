"""The report: `measured …` lines, the targets, then the figures as `name=value`, the issue's four
last. Medians are over rounds; the copy ratio is median(ours) ÷ median(baseline), with the
ratio of each round (ours ÷ that round's baseline) printed beside it."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

from bench.migrate.archive_method import ARCHIVE
from bench.migrate.rounds import STREAM, MethodRun, Round
from bench.migrate.settings import MigrateBenchSettings
from bench.migrate.source import MIB

DOWNTIME_TARGET_S = 5.0
COPY_RATIO_TARGET = 1.1


@dataclass(frozen=True)
class Results:
    settings: MigrateBenchSettings
    source_bytes: int
    load_seconds: float
    rounds: list[Round]
    archive_unavailable: str | None
    """Why physical-archive was not measured (None: it was)."""


def _runs(results: Results, method: str) -> list[MethodRun]:
    return [r.runs[method] for r in results.rounds if method in r.runs]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _round_line(r: Round) -> str:
    parts = [f"measured round {r.number}: load average {r.load_average:.2f}"]
    parts.append(f"pg_basebackup {r.baseline_s:.2f} s")
    for run in r.runs.values():
        c = run.cutover
        note = f"; {run.note}" if run.note else ""
        parts.append(
            f"{run.method}: copy {run.copy_s:.2f} s ({run.copied_bytes / MIB:.0f} MiB, the "
            f"target's start {run.start_s:.2f} s of it), "
            f"catch-up {run.catch_up_s:.2f} s; lag at the fence {run.lag_at_fence}{note}; from the "
            "fence's start: fenced "
            f"{c.fenced_s:.2f} s, replayed {c.replayed_s:.2f} s, promoted {c.promoted_s:.2f} s, "
            f"first write {c.downtime_s:.3f} s; ledger: {c.acked} commits acknowledged "
            f"({run.ledger_rate:.0f}/s) "
            f"of which {c.acked_while_fencing} while the fence went up, {c.missing} missing on the "
            f"target, {c.acked_after_fence} acknowledged after the fence"
        )
    return "; ".join(parts)


def print_report(results: Results) -> None:
    settings = results.settings
    stream = _runs(results, STREAM)
    archive = _runs(results, ARCHIVE)
    baselines = [r.baseline_s for r in results.rounds]
    ours = [run.copy_s for run in stream]
    per_round = [o / b for o, b in zip(ours, baselines, strict=True)]
    ratio = _median(ours) / _median(baselines)
    down_stream = _median([run.cutover.downtime_s for run in stream])
    down_archive = _median([run.cutover.downtime_s for run in archive]) if archive else None
    lost = sum(run.cutover.lost_commits for run in stream + archive)
    out = [
        f"measured source: PostgreSQL pgbench scale {settings.scale}, "
        f"{results.source_bytes / MIB:.0f} MiB (pg_database_size), loaded in "
        f"{results.load_seconds:.0f} s; shared_buffers {settings.shared_buffers}; load during "
        f"every round: pgbench -c 2 -R {settings.load_tps} (TPC-B) and one ledger writer "
        "(unthrottled single-row commits)",
        f"measured machine: {os.cpu_count()} cores; {settings.rounds} rounds "
        "(other work may share the machine: see each round's load average)",
        *(_round_line(r) for r in results.rounds),
        "measured copy ratio per round (build_standby ÷ pg_basebackup): "
        + ", ".join(f"{x:.3f}" for x in per_round),
        f"target cutover_downtime_s_physical_stream <= {DOWNTIME_TARGET_S:g} "
        + _met(down_stream <= DOWNTIME_TARGET_S),
    ]
    if down_archive is not None:
        out.append(
            f"target cutover_downtime_s_physical_archive <= {DOWNTIME_TARGET_S:g} "
            + _met(down_archive <= DOWNTIME_TARGET_S)
        )
    else:
        out.append(f"physical-archive: not measured ({results.archive_unavailable})")
    out += [
        f"target lost_commits = 0 {_met(lost == 0)}",
        f"target copy_ratio_vs_pg_basebackup <= {COPY_RATIO_TARGET:g} "
        + _met(ratio <= COPY_RATIO_TARGET),
        f"pg_basebackup_s={_median(baselines):.2f}",
        f"copy_s_physical_stream={_median(ours):.2f}",
        "copy_ratio_per_round=" + ",".join(f"{x:.3f}" for x in per_round),
        f"cutover_downtime_s_physical_stream={down_stream:.3f}",
        "cutover_downtime_s_physical_archive="
        + ("unavailable" if down_archive is None else f"{down_archive:.3f}"),
        f"lost_commits={lost}",
        f"copy_ratio_vs_pg_basebackup={ratio:.3f}",
    ]
    print("\n".join(out), flush=True)
