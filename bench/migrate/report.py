"""The report: `measured …` lines, the targets, then the figures as `name=value`: the physical
methods', then the upgrade's, `lost_commits` (every method's) last. Medians are over rounds; a
ratio is median(ours) ÷ median(baseline), with the ratio of each round (ours ÷ that round's
baseline) printed beside it."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

from bench.migrate.archive_method import ARCHIVE
from bench.migrate.rounds import STREAM, MethodRun, Round
from bench.migrate.settings import MigrateBenchSettings
from bench.migrate.source import MIB
from bench.migrate.upgrade import PG_UPGRADE, UpgradeRound

DOWNTIME_TARGET_S = 5.0
COPY_RATIO_TARGET = 1.1
UPGRADE_DOWNTIME_TARGET_S = 10.0
UPGRADE_RATIO_TARGET = 0.2
"""logical-upgrade's downtime ÷ pg_upgrade --copy's."""
DUMP_RATIO_TARGET = 1.1
"""Our dump method's dump + restore ÷ pg_dump + pg_restore's by hand."""


@dataclass(frozen=True)
class Results:
    settings: MigrateBenchSettings
    source_bytes: int
    load_seconds: float
    rounds: list[Round]
    archive_unavailable: str | None
    """Why physical-archive was not measured (None: it was)."""
    upgrade_unavailable: str | None = None
    """Why nothing was upgraded into PostgreSQL 18 (None: logical-upgrade and its baselines
    were measured)."""
    dump_unavailable: str | None = None
    """Why our dump method was not measured (None: it was)."""


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
    upgrades = [r.upgrade for r in results.rounds if r.upgrade is not None]
    lost = sum(run.cutover.lost_commits for run in stream + archive) + sum(
        u.logical.cutover.ledger.lost_commits for u in upgrades
    )
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
        f"target copy_ratio_vs_pg_basebackup <= {COPY_RATIO_TARGET:g} "
        + _met(ratio <= COPY_RATIO_TARGET),
    ]
    upgrade_lines, upgrade_figures = _upgrade_report(results, upgrades)
    out += [
        *upgrade_lines,
        f"target lost_commits = 0 {_met(lost == 0)}",
        f"pg_basebackup_s={_median(baselines):.2f}",
        f"copy_s_physical_stream={_median(ours):.2f}",
        "copy_ratio_per_round=" + ",".join(f"{x:.3f}" for x in per_round),
        f"cutover_downtime_s_physical_stream={down_stream:.3f}",
        "cutover_downtime_s_physical_archive="
        + ("unavailable" if down_archive is None else f"{down_archive:.3f}"),
        f"copy_ratio_vs_pg_basebackup={ratio:.3f}",
        *upgrade_figures,
        f"lost_commits={lost}",
    ]
    print("\n".join(out), flush=True)


def _upgrade_line(number: int, u: UpgradeRound) -> str:
    run = u.logical
    c = run.cutover
    ledger = c.ledger
    steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in c.durations().items())
    parts = [
        f"measured upgrade round {number} (in the order {', '.join(u.order)})",
        f"logical-upgrade: prepare_target {run.prepare_s:.2f} s, initial copy {run.copy_s:.2f} s, "
        f"catch-up {run.catch_up_s:.2f} s; lag at the fence {run.lag_at_fence.bytes} bytes, "
        f"{run.lag_at_fence.seconds:.3f} s; the cutover's steps, each: {steps}; downtime "
        f"{c.downtime_s:.3f} s; {c.sequences} sequences set; parity differences "
        f"{len(c.differences)}; ledger: {ledger.acked} commits acknowledged "
        f"({run.ledger_rate:.0f}/s) of which {ledger.acked_while_fencing} while the fence went "
        f"up, {ledger.missing} missing on the target, {ledger.acked_after_fence} acknowledged "
        "after the fence",
        f"{PG_UPGRADE} {u.pg_upgrade_s:.2f} s",
        f"pg_dump {u.by_hand.dump_s:.2f} s + pg_restore {u.by_hand.restore_s:.2f} s",
    ]
    if u.dump is not None:
        parts.append(
            f"dump: dump_to_store {u.dump.dump_s:.2f} s (the source's fingerprint "
            f"{u.dump.source_fingerprint_s:.2f} s, read while the files upload) + "
            f"restore_from_store {u.dump.restore_s:.2f} s (the target's fingerprint "
            f"{u.dump.target_fingerprint_s:.2f} s of it)"
        )
    return "; ".join(parts)


def _upgrade_report(results: Results, upgrades: list[UpgradeRound]) -> tuple[list[str], list[str]]:
    """The upgrade part's `measured`/`target` lines, and its figures (printed last)."""
    names = (
        "pg_upgrade_s",
        "pg_dump_restore_s",
        "dump_restore_s_ours",
        "cutover_downtime_s_logical_upgrade",
        "downtime_ratio_vs_pg_upgrade",
        "downtime_ratio_vs_dump_restore",
        "dump_ratio_vs_pg_dump_restore",
    )
    if not upgrades:
        reason = results.upgrade_unavailable or "no round ran"
        return [f"logical-upgrade and its baselines: not measured ({reason})"], [
            f"{name}=unavailable" for name in names
        ]
    downtime = _median([u.logical.cutover.downtime_s for u in upgrades])
    pg_upgrade = _median([u.pg_upgrade_s for u in upgrades])
    by_hand = _median([u.by_hand.total_s for u in upgrades])
    steps = list(upgrades[0].logical.cutover.steps)
    step_medians = {
        step: _median([u.logical.cutover.durations()[step] for u in upgrades]) for step in steps
    }
    differences = sum(len(u.logical.cutover.differences) for u in upgrades)
    lines = [_upgrade_line(r.number, r.upgrade) for r in results.rounds if r.upgrade is not None]
    lines += [
        "measured logical-upgrade cutover, each step's median seconds: "
        + ", ".join(f"{step} {seconds:.2f}" for step, seconds in step_medians.items())
        + f" (check_parity {step_medians['check_parity'] / downtime:.0%} of the median "
        "downtime)",
        "measured downtime ratio per round (logical-upgrade ÷ pg_upgrade --copy, ÷ pg_dump + "
        "pg_restore): "
        + ", ".join(
            f"{u.logical.cutover.downtime_s / u.pg_upgrade_s:.3f}"
            f"/{u.logical.cutover.downtime_s / u.by_hand.total_s:.3f}"
            for u in upgrades
        ),
        f"target cutover_downtime_s_logical_upgrade <= {UPGRADE_DOWNTIME_TARGET_S:g} "
        + _met(downtime <= UPGRADE_DOWNTIME_TARGET_S),
        f"target downtime_ratio_vs_pg_upgrade <= {UPGRADE_RATIO_TARGET:g} "
        + _met(downtime / pg_upgrade <= UPGRADE_RATIO_TARGET),
        f"target logical-upgrade parity differences = 0 {_met(differences == 0)}",
    ]
    dumps = [u.dump for u in upgrades if u.dump is not None]
    ours = [d.total_s for d in dumps]
    if ours:
        dump_ratio = f"{_median(ours) / by_hand:.3f}"
        lines.append(
            "measured dump, medians: dump_to_store "
            f"{_median([d.dump_s for d in dumps]):.2f} s (the source's fingerprint "
            f"{_median([d.source_fingerprint_s for d in dumps]):.2f} s, read while the files "
            f"upload), restore_from_store {_median([d.restore_s for d in dumps]):.2f} s (the "
            f"target's fingerprint {_median([d.target_fingerprint_s for d in dumps]):.2f} s); by "
            f"hand pg_dump {_median([u.by_hand.dump_s for u in upgrades]):.2f} s, pg_restore "
            f"{_median([u.by_hand.restore_s for u in upgrades]):.2f} s"
        )
        lines.append(
            "measured dump ratio per round (ours ÷ by hand): "
            + ", ".join(f"{u.dump.total_s / u.by_hand.total_s:.3f}" for u in upgrades if u.dump)
        )
        lines.append(
            f"target dump_ratio_vs_pg_dump_restore <= {DUMP_RATIO_TARGET:g} "
            + _met(_median(ours) / by_hand <= DUMP_RATIO_TARGET)
        )
    else:
        dump_ratio = "unavailable"
        lines.append(f"dump: not measured ({results.dump_unavailable})")
    figures = [
        f"pg_upgrade_s={pg_upgrade:.2f}",
        f"pg_dump_restore_s={by_hand:.2f}",
        f"dump_restore_s_ours={_median(ours):.2f}" if ours else "dump_restore_s_ours=unavailable",
        f"cutover_downtime_s_logical_upgrade={downtime:.3f}",
        f"downtime_ratio_vs_pg_upgrade={downtime / pg_upgrade:.3f}",
        f"downtime_ratio_vs_dump_restore={downtime / by_hand:.3f}",
        f"dump_ratio_vs_pg_dump_restore={dump_ratio}",
    ]
    assert [f.split("=")[0] for f in figures] == list(names)
    return lines, figures
