"""`python -m bench archive`: rounds of every contender, interleaved, then the report.

Each round runs, for each mix, the filesystem group; then the GCS-emulator group on the pgbench
mix; then the lag measurement. Within a group the order rotates from round to round, so a slow
spell of the (noisy) disk does not always land on the same contender. Every run gets a fresh
scratch directory and a freshly staged backlog, removed afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from bench.archive.backlog import stage_backlog
from bench.archive.contenders import (
    Contender,
    LagContender,
    Run,
    Tools,
    filesystem_contenders,
    gcs_contenders,
    lag_contenders,
)
from bench.archive.emulator import Emulator, running_emulator
from bench.archive.outcome import Unavailable
from bench.archive.report import Results, print_report
from bench.archive.segments import MIXES, Corpus, ensure_corpus
from bench.archive.settings import BenchSettings, load_settings

T = TypeVar("T")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rotated(items: Sequence[T], by: int) -> list[T]:
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


@contextlib.contextmanager
def scratch(settings: BenchSettings) -> Iterator[Path]:
    """A fresh directory the database user can traverse (it reads configs, writes spools)."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="tidemark-bench-", dir=settings.work_dir))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Bench:
    def __init__(self, settings: BenchSettings, corpus: Corpus) -> None:
        self.settings = settings
        self.corpus = corpus
        self.tools = Tools(settings)
        self.results = Results(settings.rounds)

    def _prepared(self, key: str, prepare: Callable[[], None]) -> bool:
        if key in self.results.unavailable:
            return False
        try:
            prepare()
        except Unavailable as exc:
            self.results.mark_unavailable(key, str(exc))
            log(f"  {key}: not available ({exc})")
            return False
        return True

    def drain(self, contender: Contender, mix: str, round_no: int) -> None:
        if not self._prepared(contender.key, contender.prepare):
            return
        segments = self.corpus.sets[mix]
        with scratch(self.settings) as work:
            try:
                backlog = stage_backlog(self.corpus, segments, work)
                emulator: contextlib.AbstractContextManager[Emulator | None] = (
                    running_emulator(work / "emulator.log")
                    if contender.uses_emulator
                    else contextlib.nullcontext(None)
                )
                with emulator as running:
                    seconds = contender.drain(Run(work, backlog, running))
            except Unavailable as exc:
                self.results.mark_unavailable(contender.key, str(exc))
                log(f"  {contender.key}: not available ({exc})")
                return
            except Exception as exc:  # reported, and tried again next round
                reason = f"round {round_no + 1} on {mix}: {type(exc).__name__}: {exc}"
                self.results.add_failure(contender.key, reason)
                log(f"  {contender.key} failed: {reason}")
                return
        self.results.add_drain(contender.key, mix, round_no, seconds)
        log(
            f"  round {round_no + 1} {mix:<8} {contender.label:<16} {seconds:7.2f} s "
            f"{segments.mib / seconds:8.1f} MiB/s"
        )

    def lag(self, contender: LagContender, round_no: int) -> None:
        if not self._prepared(f"lag_{contender.key}", contender.prepare):
            return
        with scratch(self.settings) as work:
            try:
                result = contender.measure(work)
            except Unavailable as exc:
                self.results.mark_unavailable(f"lag_{contender.key}", str(exc))
                return
            except Exception as exc:  # reported, and tried again next round
                reason = f"round {round_no + 1}: {type(exc).__name__}: {exc}"
                self.results.add_failure(f"lag_{contender.key}", reason)
                log(f"  lag {contender.key} failed: {reason}")
                return
        self.results.add_lag(contender.key, round_no, result)
        log(
            f"  round {round_no + 1} lag      {contender.label:<16} p50 {result.p50:.3f} s "
            f"p99 {result.p99:.3f} s over {len(result.lags)} segments"
        )

    def run(self) -> None:
        fs = filesystem_contenders(self.tools, self.corpus)
        gcs = gcs_contenders(self.tools, self.corpus)
        lag = lag_contenders(self.tools, self.corpus)
        for round_no in range(self.settings.rounds):
            log(f"round {round_no + 1}/{self.settings.rounds}")
            for mix in MIXES:
                for contender in rotated(fs, round_no):
                    self.drain(contender, mix, round_no)
            for contender in rotated(gcs, round_no):
                self.drain(contender, "pgbench", round_no)
            for lag_contender in rotated(lag, round_no):
                self.lag(lag_contender, round_no)


def main(argv: list[str] | None = None) -> int:
    """Run the archive benchmark (configured by `TIDEMARK_BENCH_*`, not by arguments)."""
    if argv:
        log(f"python -m bench archive takes no arguments (got {' '.join(argv)}); see docs")
        return 2
    settings = load_settings()
    log(f"archive benchmark: {settings.rounds} round(s), compression {settings.compression}")
    corpus = ensure_corpus(settings, log)
    bench = Bench(settings, corpus)
    bench.run()
    print_report(settings, corpus, bench.results, bench.tools.notes)
    return 0
