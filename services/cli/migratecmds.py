"""`tidemark migrate …`: move a database onto the platform through the planner's migration saga.

    advise SOURCE     tm.qry.planner.advise      the methods that fit the facts given, ranked,
                                                 and why each other one is ruled out
    plan SOURCE       nothing is sent            the `migration.request` that `start` would send
    start SOURCE      migration.request          then the saga's events until it is ready or
                                                 paused, completed, or failed (--detach: until
                                                 `migration.requested`)
    status [SOURCE]   tm.qry.planner.migration   a table; for one migration its phase history,
                                                 what it waits for, lag, downtime vs budget
    status PROGRAM    tm.qry.planner.program     a program's databases (`programcmds.py`)
    program start FILE  migration.program.request  a wave of migrations (`programcmds.py`)
    pause|resume|cutover|abort|rollback SOURCE   the control command, then the event that
                                                 confirms it (abort and rollback confirm first)

Input is checked against the contract's models, and what `check_request` can check without the
planner, before anything is sent: a bad duration, window or lag budget is a usage error (exit 2).
A refusal by the planner (`request.rejected`) exits 1 with its reason and code, as for restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas import ContractError, DatabaseRef, Engine, Envelope, Payload, decode, uuid7
from schemas.messages import (
    AbortMigration,
    Advice,
    AdviceRequest,
    CutoverMigration,
    CutoverStarting,
    CutoverWindow,
    MigrationCompleted,
    MigrationFacts,
    MigrationFailed,
    MigrationMethod,
    MigrationPhase,
    MigrationPhaseChanged,
    MigrationProgress,
    MigrationReady,
    MigrationRequested,
    MigrationRequestError,
    MigrationRolledBack,
    MigrationStatusReply,
    MigrationStatusRequest,
    MigrationView,
    PauseMigration,
    RequestMigration,
    RequestRejected,
    ResumeMigration,
    RollbackMigration,
)
from schemas.messages.advice import PLATFORM_ENDIANNESS, Endianness, Scope
from schemas.messages.migrations import (
    METHOD_ENGINE,
    POINT_OF_NO_RETURN,
    ROLLBACK_AFTER_CUTOVER,
    TERMINAL_PHASES,
    check_request,
)
from services.cli.locate import StateDir, find_state_dir
from services.cli.output import OutputFormat, OutputOption, emit_json
from services.cli.plannercmds import render_answer, run_with_planner
from services.cli.progressview import human_bytes, transfer_detail
from services.cli.querycmds import DatabaseArg, check_uid, show_time
from services.cli.stackcmds import console, resolve_nats
from services.planner.advisor import ADVISE_SUBJECT
from services.planner.client import PlannerClient, PlannerError
from services.planner.handlers.queries import QUERY_PREFIX
from services.settings import NatsSettings

M = TypeVar("M", bound=BaseModel)

STATUS_SUBJECT = f"{QUERY_PREFIX}.migration"

migrate_app = typer.Typer(
    help="Migrate a database onto the platform: advise, plan, start, follow, cut over.",
    no_args_is_help=True,
)

# --- what the user types: durations, sizes, times, windows ----------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$")
_BYTES = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 10**3,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 10**6,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 10**9,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 10**12,
    "p": 1 << 50,
    "pib": 1 << 50,
    "pb": 10**15,
}


def parse_duration(text: str, option: str) -> float:
    """`30s`, `5m`, `1h`, `1h30m`, `2d`, `250ms`, or plain seconds (`90`), as seconds."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION_PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise typer.BadParameter(
                f"{option} {text!r} is not a duration; use e.g. 30s, 5m, 1h or 1h30m"
            ) from None
        seconds = sum(float(n) * _SECONDS[u] for n, u in parts)
    # float() takes "nan", "inf" and "-5": none of them is a length of time.
    if not math.isfinite(seconds) or seconds < 0:
        raise typer.BadParameter(f"{option} {text!r} is not a duration; use e.g. 30s, 5m, 1h")
    return seconds


def parse_size(text: str, option: str) -> int:
    """`16MiB`, `2G`, `500GB`, `1048576`: bytes (KiB/K binary, KB decimal); a rate may end `/s`."""
    match = _SIZE.match(text.strip().removesuffix("/s"))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTES:
        raise typer.BadParameter(
            f"{option} {text!r} is not an amount of bytes; use e.g. 16MiB, 2GiB or 1048576"
        )
    return int(float(match.group(1)) * _BYTES[unit])


def parse_time(text: str, option: str) -> datetime:
    """ISO 8601; `Z` or an offset, a time without a zone is UTC."""
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{option} {text!r}: {text.strip()!r} is not a time; use ISO 8601, "
            "e.g. 2026-12-08T01:00Z"
        ) from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).astimezone(UTC)


def parse_window(text: str) -> CutoverWindow:
    """`START/END` or `START+DURATION` (`2026-12-08T01:00Z/2026-12-08T03:00Z`,
    `2026-12-08T01:00Z+2h`)."""
    if "/" in text:
        start_text, _, end_text = text.partition("/")
        start, end = parse_time(start_text, "--window"), parse_time(end_text, "--window")
    else:
        # rpartition: a time's own offset (`+01:00`) comes before the length, never after it.
        start_text, plus, length = text.rpartition("+")
        if not plus or ":" in length or re.fullmatch(r"\d{4}", length):  # an offset, no length
            raise typer.BadParameter(
                f"--window {text!r}: a window is START/END or START+DURATION, e.g. "
                "2026-12-08T01:00Z/2026-12-08T03:00Z or 2026-12-08T01:00Z+2h"
            )
        start = parse_time(start_text, "--window")
        end = start + timedelta(seconds=parse_duration(length, "--window"))
    try:
        return CutoverWindow(start=start, end=end)
    except ValidationError as exc:
        raise typer.BadParameter(f"--window {text!r}: {_explain(exc)}") from None


def parse_pause_after(text: str) -> MigrationPhase | None:
    if text in ("never", "none"):
        return None
    try:
        return MigrationPhase(text)
    except ValueError:
        phases = ", ".join(p.value for p in MigrationPhase if p not in TERMINAL_PHASES)
        raise typer.BadParameter(
            f"--pause-after {text!r} is not a phase; give one of {phases}, or never"
        ) from None


def parse_options(pairs: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise typer.BadParameter(f"--option {pair!r}: give it as name=value")
        if name in options:
            raise typer.BadParameter(f"--option {name} is given twice")
        options[name] = value
    return options


def parse_migration_id(text: str | None) -> uuid.UUID | None:
    if text is None:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise typer.BadParameter(f"--id {text!r} is not a migration id (a UUID)") from None


# Where each field of a `RequestMigration` comes from on the command line, so a refusal by the
# model names the flag the user typed rather than a field they never saw.
_FLAGS: dict[str, str] = {
    "downtime_budget_s": "--downtime-budget",
    "lag.max_bytes": "--lag-max-bytes",
    "lag.max_seconds": "--lag-max-seconds",
    "lag.hold_s": "--lag-hold",
    "lag": "--lag-max-bytes/--lag-max-seconds",
    "windows": "--window",
    "participants": "--participant",
    "options": "--option",
    "pause_after": "--pause-after",
    "ack_timeout_s": "--ack-timeout",
    "reason": "--reason",
    "target_instance.node": "--node",
    "target_instance.data_dir": "--data-dir",
    "target_instance.port": "--port",
    "target_instance.release": "--release",
    "target_instance.database.uid": "--to",
    "target_instance.database.name": "--target-name",
    "facts.size_bytes": "--size",
    "facts.write_rate_bytes_s": "--write-rate",
    "facts.bandwidth_bytes_s": "--bandwidth",
    "facts.source_version": "--source-version",
    "facts.target_version": "--target-version",
    "facts.source_charset": "--source-charset",
    "facts.target_charset": "--target-charset",
    "facts.databases_in_cluster": "--databases-in-cluster",
    "facts.source_platform": "--source-platform",
    "facts.target_platform": "--target-platform",
    "facts.source_nchar_charset": "--source-nchar-charset",
    "facts.target_nchar_charset": "--target-nchar-charset",
    "facts.schemas": "--schema",
    "facts.tables_without_identity": "--table-without-identity",
    "facts.unlogged_tables": "--unlogged-table",
    "facts.large_objects": "--large-objects",
    "facts.extensions_missing_on_target": "--missing-extension",
    "constraints.downtime_budget_s": "--downtime-budget",
    "constraints.window_s": "--window",
}


def _flag(loc: tuple[int | str, ...]) -> str | None:
    path = [str(p) for p in loc]
    while path:
        if ".".join(path) in _FLAGS:
            return _FLAGS[".".join(path)]
        path.pop()
    return None


_PATTERN_WANTED = {
    "--schema": "an Oracle user name, unquoted (APP, HR_2)",
    "--source-platform": "a V$DATABASE.PLATFORM_NAME ('Linux x86 64-bit')",
    "--target-platform": "a V$DATABASE.PLATFORM_NAME ('Linux x86 64-bit')",
    "--table-without-identity": "schema.table, quoted where PostgreSQL quotes (public.events)",
    "--unlogged-table": "schema.table, quoted where PostgreSQL quotes (public.events)",
}
"""What a flag's value looks like, said instead of the regular expression it failed."""


def _explain(exc: ValidationError) -> str:
    said = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        message = str(error["msg"]).removeprefix("Value error, ")
        flag = _flag(tuple(error["loc"]))
        if error["type"] == "string_pattern_mismatch" and flag in _PATTERN_WANTED:
            message = f"wants {_PATTERN_WANTED[flag]}"
        said.append(f"{flag}: {message}" if flag else message)
    return "; ".join(said)


# --- the request ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationArgs:
    """What `plan` and `start` are given, as typed."""

    to: str
    node: str
    method: MigrationMethod
    data_dir: str | None = None
    port: int | None = None
    release: int | None = None
    target_name: str | None = None
    windows: list[str] = field(default_factory=list)
    downtime_budget: str = "60s"
    lag_max_bytes: str | None = None
    lag_max_seconds: str | None = None
    lag_hold: str = "60s"
    pause_after: str = "ready"
    participants: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    ack_timeout: str = "5m"
    reason: str = "tidemark migrate"
    migration_id: str | None = None


def build_request(args: MigrationArgs) -> RequestMigration:
    """The `RequestMigration` these arguments ask for, or `typer.BadParameter` saying which flag
    is wrong and why."""
    if args.data_dir is not None and not args.data_dir.startswith("/"):
        # Resolved on the target's node, not here: a path relative to this shell means nothing.
        raise typer.BadParameter(f"--data-dir {args.data_dir!r} must be absolute (on {args.node})")
    budget = parse_duration(args.downtime_budget, "--downtime-budget")
    lag: dict[str, Any] = {"hold_s": parse_duration(args.lag_hold, "--lag-hold")}
    if args.lag_max_bytes is not None:
        lag["max_bytes"] = parse_size(args.lag_max_bytes, "--lag-max-bytes")
    if args.lag_max_seconds is not None:
        lag["max_seconds"] = parse_duration(args.lag_max_seconds, "--lag-max-seconds")
    if "max_bytes" not in lag and "max_seconds" not in lag:
        # The final sync after the fence replays the lag: half the budget for it leaves the
        # other half for the fence and the promote.
        lag["max_seconds"] = budget / 2
    fields = {
        "migration_id": parse_migration_id(args.migration_id) or uuid7(),
        "target_instance": {
            "database": {
                "uid": args.to,
                "engine": METHOD_ENGINE[args.method],
                "name": args.target_name or args.to,
            },
            "node": args.node,
            "data_dir": args.data_dir,
            "port": args.port,
            "release": args.release,
        },
        "method": args.method,
        "options": parse_options(args.options),
        "windows": [parse_window(w) for w in args.windows],
        "downtime_budget_s": budget,
        "lag": lag,
        "pause_after": parse_pause_after(args.pause_after),
        "participants": args.participants,
        "ack_timeout_s": parse_duration(args.ack_timeout, "--ack-timeout"),
        "reason": args.reason,
    }
    try:
        return RequestMigration.model_validate(fields)
    except ValidationError as exc:
        raise typer.BadParameter(_explain(exc)) from None


def check_locally(
    request: RequestMigration, source: str | DatabaseRef, *, now: datetime | None = None
) -> None:
    """`check_request` before sending: source equal to target, every window past, and (with
    the source's `DatabaseRef`) an engine the method does not move. Exit 2 saying what is wrong.

    Given only a uid (`plan`, which asks nobody), the source is taken to be of the method's
    engine: the planner checks that at intake."""
    ref = (
        source
        if isinstance(source, DatabaseRef)
        else DatabaseRef(
            uid=source,
            engine=request.target_instance.database.engine,
            name=request.target_instance.database.name,
        )
    )
    try:
        check_request(request, ref, now=now or datetime.now(UTC))
    except MigrationRequestError as exc:
        raise typer.BadParameter(f"{exc.reason} ({exc.code})") from None


def request_document(source: str, request: RequestMigration) -> dict[str, Any]:
    subject = RequestMigration.SUBJECT.format(database=source, **request.subject_values())
    return {"source": source, "subject": subject, "request": request.model_dump(mode="json")}


def span(seconds: float) -> str:
    """A length of time as the flags take it back: `45s`, `12m30s`, `3h05m`, `2d04h`."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"


def _window(w: CutoverWindow) -> str:
    return f"{show_time(w.start)} → {show_time(w.end)} ({span((w.end - w.start).total_seconds())})"


def render_request(source: str, request: RequestMigration) -> None:
    target = request.target_instance
    where = ", ".join(
        x
        for x in (
            f"on {target.node}",
            target.data_dir,
            f"port {target.port}" if target.port else None,
            f"PostgreSQL {target.release}" if target.release else None,
        )
        if x
    )
    lag = request.lag
    gate = " and ".join(
        x
        for x in (
            f"≤ {human_bytes(lag.max_bytes)}" if lag.max_bytes is not None else None,
            f"≤ {span(lag.max_seconds)}" if lag.max_seconds is not None else None,
        )
        if x
    )
    console.print(
        f"[bold]migration {request.migration_id}[/]: {source} → {target.database.uid} "
        f"({request.method.value})",
        highlight=False,
    )
    rows = [
        ("subject", request_document(source, request)["subject"]),
        ("target", f"{target.database.uid} ({target.database.name}) {where}"),
        ("downtime budget", span(request.downtime_budget_s)),
        ("ready when", f"lag {gate}, held {span(lag.hold_s)}"),
        ("pause after", request.pause_after.value if request.pause_after else "never"),
        (
            "windows",
            "; ".join(_window(w) for w in request.windows)
            or "none: cut over only on `tidemark migrate cutover`",
        ),
        ("participants", ", ".join(request.participants) or "none"),
        ("drain acks within", span(request.ack_timeout_s)),
    ]
    if request.options:
        rows.append(("options", ", ".join(f"{k}={v}" for k, v in request.options.items())))
    for name, value in rows:
        console.print(f"  {name + ':':<18} {value}", highlight=False, markup=False)


# --- the planner's queries --------------------------------------------------------------------


async def ask_planner(
    nc: Client, subject: str, question: BaseModel, answer: type[M], *, timeout: float = 30.0
) -> M:
    """A request/reply query of the planner's micro service; `PlannerError` saying why not."""
    try:
        msg = await nc.request(subject, question.model_dump_json().encode(), timeout=timeout)
    except Exception as exc:
        raise PlannerError(
            f"the planner did not answer {subject} ({exc or type(exc).__name__}); is it running?"
        ) from exc
    headers = msg.headers or {}
    if "Nats-Service-Error-Code" in headers:
        raise PlannerError(
            f"the planner refused {subject} ({headers['Nats-Service-Error-Code']}): "
            f"{headers.get('Nats-Service-Error', 'no reason given')}"
        )
    try:
        return answer.model_validate_json(msg.data)
    except ValidationError as exc:
        raise PlannerError(
            f"the planner's answer on {subject} is not a {answer.__name__}: {exc}"
        ) from None


# --- following a migration's events -----------------------------------------------------------


@contextlib.asynccontextmanager
async def watching_migration(
    nc: Client, source: str, target: str
) -> AsyncIterator[asyncio.Queue[Envelope[Any]]]:
    """Every event of migrations from `source` to `target`, from before a command is sent.

    Not `plannercmds.watching`: a migration's subjects end in two database tokens, which its
    `tm.evt.*.*.{uid}` does not reach."""
    queue: asyncio.Queue[Envelope[Any]] = asyncio.Queue()

    async def on(msg: Msg) -> None:
        with contextlib.suppress(ContractError):
            queue.put_nowait(decode(msg.data, subject=msg.subject))

    sub = await nc.subscribe(f"tm.evt.migration.*.{source}.{target}", cb=on)
    try:
        yield queue
    finally:
        await sub.unsubscribe()


def progress_detail(progress: MigrationProgress, elapsed_s: float, first_copied: int = 0) -> str:
    """`1.0 GiB / 4.0 GiB, 102.4 MiB/s, ETA 0:30, lag 12.0 MiB / 3.2s, ready in ~5m`."""
    parts = []
    copied = transfer_detail(
        progress.bytes_copied, progress.bytes_total, "bytes", elapsed_s, first_done=first_copied
    )
    if copied:
        parts.append(copied)
    lag = " / ".join(
        x
        for x in (
            human_bytes(progress.lag_bytes) if progress.lag_bytes is not None else None,
            span(progress.lag_seconds) if progress.lag_seconds is not None else None,
        )
        if x
    )
    if lag:
        parts.append(f"lag {lag}")
    if progress.eta_ready_s is not None:
        parts.append(f"ready in ~{span(progress.eta_ready_s)}")
    return ", ".join(parts)


def _where(phase: MigrationPhase, step: Any) -> str:
    return f"{phase.value}/{step.value}" if step is not None else phase.value


def describe(data: Payload) -> str | None:
    """The line an event earns in the log above the progress bar; None for progress alone."""
    if isinstance(data, MigrationRequested):
        windows = len(data.windows)
        return (
            f"requested: {data.method.value} onto {data.target_instance.node}, downtime budget "
            f"{span(data.downtime_budget_s)}, "
            + (f"{windows} window{'s' if windows > 1 else ''}" if windows else "no window")
        )
    if isinstance(data, MigrationPhaseChanged):
        line = f"→ {_where(data.phase, data.step)}" + (" (paused)" if data.paused else "")
        if data.step is POINT_OF_NO_RETURN:
            line += " [point of no return]"
        return line + (f": {data.message}" if data.message else "")
    if isinstance(data, MigrationReady):
        nxt = f"; next window {_window(data.next_window)}" if data.next_window else ""
        return (
            f"ready: lag {human_bytes(data.lag_bytes)} / {span(data.lag_seconds)}, held "
            f"{span(data.held_s)}{nxt}"
        )
    if isinstance(data, CutoverStarting):
        who = ", ".join(data.participants) or "no participants"
        return f"cutover starting: drain now ({who}; acks by {show_time(data.ack_deadline)})"
    return None


def ending(data: Payload, source: str) -> tuple[int, str] | None:
    """How a migration stands when an event ends the wait: (exit code, the sentence shown, in
    rich markup; what came from the bus is escaped)."""
    if isinstance(data, MigrationCompleted):
        e = data.endpoint
        return 0, (
            f"[green]✓ migrated[/]: {data.target} is the primary; downtime "
            f"{span(data.downtime_s)} (source final {data.source_final}, target "
            f"{data.target_final}); applications connect to {e.host}:{e.port}/{e.database}"
        )
    if isinstance(data, MigrationFailed):
        serving = "serves" if data.source_serving else "is FENCED and does not serve"
        passed = "passed" if data.point_of_no_return_passed else "not passed"
        code = f" ({data.failure.code})" if data.failure.code else ""
        return 1, (
            f"[red]✗ migration failed[/] in {_where(data.phase, data.step)}{code}: "
            f"{escape(data.failure.reason)}. The source {source} {serving}; point of no return "
            f"{passed}."
        )
    if isinstance(data, MigrationRolledBack):
        follows = "follows it" if data.target_following else "does not follow it"
        return 1, (
            f"[yellow]↩ rolled back[/]: {source} is the primary again at "
            f"{data.source_position}; {data.target} {follows}"
        )
    if isinstance(data, MigrationPhaseChanged):
        if data.phase is MigrationPhase.ABORTED:
            said = f"[yellow]✗ aborted[/]: {source} keeps serving. {escape(data.message)}"
            return 1, said.rstrip()
        if data.phase is MigrationPhase.ROLLED_BACK:
            return 1, f"[yellow]↩ rolled back[/]: {source} is the primary again"
        if data.phase in TERMINAL_PHASES:
            return None  # completed / failed: their own events carry what to say
        if data.paused:
            hint = (
                f"cut over with `tidemark migrate cutover {source}`"
                if data.phase is MigrationPhase.READY
                else f"go on with `tidemark migrate resume {source}`"
            )
            return 0, f"[green]⏸ paused[/] after {data.phase.value}: {hint}"
    if isinstance(data, MigrationReady):
        return 0, f"[green]✓ ready[/]: cut over with `tidemark migrate cutover {source}`"
    return None


@dataclass
class Followed:
    events: list[Envelope[Any]]
    ended: bool

    @property
    def last(self) -> Envelope[Any] | None:
        return self.events[-1] if self.events else None

    @property
    def last_data(self) -> Any:
        return self.events[-1].data if self.events else None


class _Board:
    """The live view: a line per change of phase, one progress bar for the numbers."""

    def __init__(self, show: bool, label: str) -> None:
        self.progress = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=console,
            )
            if show
            else None
        )
        self.label = label
        self.task: Any = None
        self.first: tuple[float, int] | None = None  # (when, bytes) of the first copy report
        self.shown: tuple[Any, ...] | None = None  # the phase line shown last

    def __enter__(self) -> _Board:
        if self.progress is not None:
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label, total=None, detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)

    def show(self, data: Payload) -> None:
        if self.progress is None:
            return
        if isinstance(data, MigrationPhaseChanged):
            # Progress reports repeat their phase: a line only when the phase, step, pause or
            # message changes, the numbers go to the bar.
            key = (data.phase, data.step, data.paused, data.message)
            if key != self.shown:
                console.print(describe(data), highlight=False, markup=False)
                self.shown = key
            self._numbers(data)
        elif (line := describe(data)) is not None:
            console.print(line, highlight=False, markup=False)

    def _numbers(self, data: MigrationPhaseChanged) -> None:
        assert self.progress is not None
        p = data.progress
        self.progress.update(self.task, description=f"{self.label}: {data.phase.value}")
        if p.bytes_copied is not None:
            self.first = self.first or (time.monotonic(), p.bytes_copied)
            if p.bytes_total:
                done = min(p.bytes_copied, p.bytes_total)
                self.progress.update(self.task, total=p.bytes_total, completed=done)
        since, first = self.first if self.first else (time.monotonic(), 0)
        detail = progress_detail(p, time.monotonic() - since, first)
        self.progress.update(self.task, detail=detail)


async def follow_migration(
    queue: asyncio.Queue[Envelope[Any]],
    migration_id: uuid.UUID,
    *,
    stop: Callable[[Envelope[Any]], bool],
    timeout: float,
    show: bool,
    label: str = "migration",
    seen: list[Envelope[Any]] | None = None,
) -> Followed:
    """This migration's events, shown as they come, until `stop` says so or `timeout` passes.
    `seen` (if given) fills as they come, for a caller watching from beside."""
    seen = [] if seen is None else seen
    with _Board(show, label) as board:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await queue.get()
                    if getattr(event.data, "migration_id", None) != migration_id:
                        continue
                    seen.append(event)
                    board.show(event.data)
                    if stop(event):
                        return Followed(seen, ended=True)
        except TimeoutError:
            return Followed(seen, ended=False)


async def answer_and_follow(
    asking: asyncio.Task[Any],
    following: asyncio.Task[Followed],
    seen: list[Envelope[Any]],
    *,
    quiet_s: float,
    text: bool,
) -> tuple[Any, Followed | None]:
    """The planner's answer to a `migration.request`, and the migration followed meanwhile.

    The answer comes once both preflights passed, after `migration.requested` and the
    `validating` events, so both are awaited at once. A rejection ends the wait (no `Followed`);
    an end before the answer (--detach's `migration.requested`, a preflight's refusal) takes
    the answer if it comes within a moment. Nothing at all within `quiet_s`: no planner."""
    done, _ = await asyncio.wait(
        {asking, following}, timeout=quiet_s, return_when=asyncio.FIRST_COMPLETED
    )
    if not done and not seen:
        raise PlannerError(
            f"no answer from the planner and no event of the migration within {quiet_s:g}s; "
            "is the planner running?"
        )
    if not done:
        done, _ = await asyncio.wait({asking, following}, return_when=asyncio.FIRST_COMPLETED)
    if asking in done:
        answer = asking.result()
        if text:
            render_answer(answer)
        if isinstance(answer, RequestRejected):
            return answer, None
        return answer, await following
    answered, _ = await asyncio.wait({asking}, timeout=2.0)
    answer = asking.result() if answered else None
    if text and answer is not None:
        render_answer(answer)
    return answer, following.result()


def _events_json(events: list[Envelope[Any]]) -> list[dict[str, Any]]:
    return [
        {"type": e.type, "occurred_at": e.occurred_at, "data": e.data.model_dump(mode="json")}
        for e in events
    ]


# --- finding the migration a control command is for ----------------------------------------


class NoSingleMigration(LookupError):
    """The control command's migration could not be chosen; the message says why and what to do."""


def choose_migration(
    views: list[MigrationView],
    source: str,
    migration_id: uuid.UUID | None,
    *,
    take_completed: bool = False,
) -> MigrationView:
    """The migration a control command on `source` is for: `migration_id`'s, else the single
    unfinished one. (`take_completed` is kept for callers; a completed migration is final and
    the planner refuses to roll it back, so it is never chosen.)"""
    if migration_id is not None:
        found = [v for v in views if v.migration_id == migration_id]
        if not found:
            raise NoSingleMigration(f"no migration {migration_id} is known to the planner")
        if found[0].source != source:
            raise NoSingleMigration(
                f"migration {migration_id} is of {found[0].source}, not of {source}"
            )
        return found[0]
    ours = [v for v in views if v.source == source]
    open_ = [v for v in ours if v.phase not in TERMINAL_PHASES]
    if len(open_) == 1:
        return open_[0]
    if len(open_) > 1:
        listed = ", ".join(f"{v.migration_id} (→ {v.target}, {v.phase.value})" for v in open_)
        raise NoSingleMigration(
            f"{source} has {len(open_)} unfinished migrations: {listed}; name one with --id"
        )
    raise NoSingleMigration(
        f"{source} has no unfinished migration"
        + (f" ({len(ours)} finished; name one with --id)" if ours else "")
    )


# --- control commands: what each sends, and the event that confirms it ----------------------


def _pause_confirmed(data: Payload) -> bool:
    return isinstance(data, MigrationPhaseChanged) and data.paused


def _resume_confirmed(data: Payload) -> bool:
    return isinstance(data, MigrationPhaseChanged) and not data.paused


def _cutover_confirmed(data: Payload) -> bool:
    # Not "no longer paused": a saga waiting for its window says so in an event our command
    # caused, which confirms any control command (`confirms`).
    if isinstance(data, CutoverStarting | MigrationCompleted):
        return True
    return isinstance(data, MigrationPhaseChanged) and data.phase in (
        MigrationPhase.CUTTING_OVER,
        MigrationPhase.VERIFYING,
    )


def _abort_confirmed(data: Payload) -> bool:
    return isinstance(data, MigrationPhaseChanged) and data.phase is MigrationPhase.ABORTED


def _rollback_confirmed(data: Payload) -> bool:
    return isinstance(data, MigrationRolledBack) or (
        isinstance(data, MigrationPhaseChanged) and data.phase is MigrationPhase.ROLLED_BACK
    )


@dataclass(frozen=True)
class Control:
    """One control command: the message, the event that confirms it, and what is awaited."""

    command: type[Payload]
    confirmed: Callable[[Payload], bool]
    awaited: str
    done: str


CONTROLS: dict[str, Control] = {
    "pause": Control(
        PauseMigration,
        _pause_confirmed,
        "the saga to pause at the end of its current phase",
        "paused",
    ),
    "resume": Control(ResumeMigration, _resume_confirmed, "the saga to go on", "resumed"),
    "cutover": Control(
        CutoverMigration,
        _cutover_confirmed,
        "the cutover to start (or to wait for its window)",
        "cutover under way",
    ),
    "abort": Control(
        AbortMigration,
        _abort_confirmed,
        "the saga to unfence the source and stop",
        "aborted; the source keeps serving",
    ),
    "rollback": Control(
        RollbackMigration,
        _rollback_confirmed,
        "the old source to be the primary again",
        "rolled back; the old source is the primary",
    ),
}


def confirms(event: Envelope[Any], control: Control, command_id: uuid.UUID) -> bool:
    """Does `event` confirm the control command `command_id`? A phase event it caused does;
    otherwise the planner's own event that the command's table entry names. An executor's
    progress report says `paused: false` about a saga it does not drive: never from it."""
    if event.causation_id == command_id and isinstance(event.data, MigrationPhaseChanged):
        return True
    return event.source.partition("@")[0] == "planner" and control.confirmed(event.data)


def consequence(name: str, view: MigrationView) -> str:
    """What an abort or a rollback will do to this migration, in words the prompt shows."""
    which = (
        f"migration {view.migration_id} of {view.source} → {view.target} "
        f"({view.method.value}, now {_where(view.phase, view.step)})"
    )
    if name == "abort":
        if view.point_of_no_return_passed:
            return (
                f"aborting {which}: the point of no return is passed, so the planner will refuse "
                "it; the way back is `tidemark migrate rollback`"
            )
        return (
            f"aborting {which} stops it for good: the target copy is abandoned and {view.source} "
            "is unfenced and keeps serving"
        )
    if view.method not in ROLLBACK_AFTER_CUTOVER:
        return (
            f"rolling back {which}: {view.method.value} keeps no way back after the cutover, so "
            "the planner will refuse it"
        )
    return (
        f"rolling back {which} makes {view.source} the primary again: {view.source} follows "
        f"{view.target} first, so the target's new commits are kept"
    )


def confirm(name: str, what: str, source: str, *, yes: bool) -> None:
    """Return once the user has said yes to `what`; exit 1 otherwise (nothing was sent)."""
    if yes:
        return
    if not sys.stdin.isatty():
        console.print(
            f"[red]✗ refused[/]: {escape(what)}; no terminal to confirm at: add --yes.",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(f"[yellow]![/] {escape(what)}.", highlight=False)
    typed = typer.prompt(f"Type the database uid ({source}) to {name}")
    if typed.strip() != source:
        console.print("[red]✗ not confirmed; nothing was sent[/]")
        raise typer.Exit(1)


# --- rendering the planner's answers --------------------------------------------------------


def _phase_cell(v: MigrationView) -> str:
    return _where(v.phase, v.step) + (" (paused)" if v.paused else "")


def _copied(p: MigrationProgress) -> str:
    if p.bytes_copied is None:
        return ""
    total = f" / {human_bytes(p.bytes_total)}" if p.bytes_total else ""
    return human_bytes(p.bytes_copied) + total


def _lag(p: MigrationProgress) -> str:
    return ", ".join(
        x
        for x in (
            human_bytes(p.lag_bytes) if p.lag_bytes is not None else None,
            span(p.lag_seconds) if p.lag_seconds is not None else None,
        )
        if x
    )


def render_migrations(reply: MigrationStatusReply) -> None:
    table = Table(title="Migrations", title_justify="left")
    for column in ("migration", "source → target", "method", "phase", "copied", "lag", "waiting"):
        table.add_column(column)
    for v in reply.migrations:
        table.add_row(
            str(v.migration_id),
            f"{v.source} → {v.target}",
            v.method.value,
            _phase_cell(v),
            _copied(v.progress),
            _lag(v.progress),
            escape(v.waiting or ""),
        )
    console.print(table)


def render_migration(v: MigrationView, *, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    console.print(
        f"[bold]migration {v.migration_id}[/]: {v.source} → {v.target} ({v.method.value})",
        highlight=False,
    )
    if v.downtime_estimate_s is None:
        downtime = f"estimate unknown, budget {span(v.downtime_budget_s)}"
    else:
        verdict = (
            "[green]within budget[/]"
            if v.downtime_estimate_s <= v.downtime_budget_s
            else "[red]OVER budget[/]"
        )
        downtime = (
            f"estimate {span(v.downtime_estimate_s)}, budget {span(v.downtime_budget_s)}: {verdict}"
        )
    upcoming = [w for w in v.windows if w.end > now]
    windows = "; ".join(
        _window(w) + (" (next)" if w is min(upcoming, key=lambda u: u.start) else "")
        for w in v.windows
        if w.end > now
    )
    rows = [
        ("phase", _phase_cell(v)),
        ("waiting for", escape(v.waiting or "nothing")),
        ("point of no return", "passed" if v.point_of_no_return_passed else "not passed"),
        ("copied", _copied(v.progress) or "unknown"),
        ("lag", _lag(v.progress) or "unknown"),
        ("ready in", span(v.progress.eta_ready_s) if v.progress.eta_ready_s is not None else "?"),
        ("downtime", downtime),
        ("windows", windows or ("none left" if v.windows else "none: cut over on command")),
        ("requested", show_time(v.requested_at)),
        ("updated", show_time(v.updated_at)),
    ]
    for name, value in rows:
        console.print(f"  {name + ':':<20} {value}", highlight=False)
    if v.history:
        history = Table(title="history", title_justify="left")
        for column in ("at", "phase", "message"):
            history.add_column(column)
        for visit in v.history:
            history.add_row(
                show_time(visit.at), _where(visit.phase, visit.step), escape(visit.message)
            )
        console.print(history)


def render_advice(source: str, facts: MigrationFacts, advice: Advice) -> None:
    console.print(
        f"[bold]{source}[/]: {facts.engine.value} {facts.source_version} → "
        f"{facts.target_version}, {human_bytes(facts.size_bytes)}, writes "
        f"{human_bytes(facts.write_rate_bytes_s)}/s over {human_bytes(facts.bandwidth_bytes_s)}/s",
        highlight=False,
    )
    if advice.ranked:
        table = Table(title="Methods that fit, best first", title_justify="left")
        for column in ("rank", "method", "until ready", "downtime", "how it is estimated"):
            table.add_column(column)
        for m in advice.ranked:
            table.add_row(
                str(m.rank),
                m.method.value if m.built else f"{m.method.value} (not built yet)",
                span(m.estimated_duration_s),
                span(m.estimated_downtime_s),
                escape(m.why),
            )
        console.print(table)
    else:
        console.print("[red]✗ no method fits these facts and constraints[/]")
    if advice.ruled_out:
        console.print("ruled out:")
        for r in advice.ruled_out:
            console.print(
                f"  {r.method.value}: {'; '.join(r.reasons)}", highlight=False, markup=False
            )


# --- the commands ---------------------------------------------------------------------------

NatsUrl = Annotated[
    str | None, typer.Option("--nats-url", help="NATS URL (default: the running stack's)")
]
NewMigrationId = Annotated[
    str | None,
    typer.Option("--id", help="the new migration's id; the same id again is the same request"),
]
MigrationIdOpt = Annotated[
    str | None, typer.Option("--id", help="the migration's id (default: the only unfinished one)")
]
To = Annotated[
    str, typer.Option("--to", help="the target database's uid (a new one)", callback=check_uid)
]
NodeOpt = Annotated[str, typer.Option("--node", help="the node the target runs on")]
MethodOpt = Annotated[
    MigrationMethod, typer.Option("--method", help="how the data moves (`migrate advise`)")
]
DataDir = Annotated[
    str | None, typer.Option("--data-dir", help="PostgreSQL: the target's data directory on NODE")
]
PortOpt = Annotated[int | None, typer.Option("--port", help="PostgreSQL: the target's port")]
ReleaseOpt = Annotated[
    int | None,
    typer.Option(
        "--release",
        help="PostgreSQL: the target's major release (logical-upgrade, dump); default the "
        "source's; the target node's executor must have it",
    ),
]
TargetName = Annotated[
    str | None, typer.Option("--target-name", help="the target's cluster name (default: its uid)")
]
Windows = Annotated[
    list[str] | None,
    typer.Option(
        "--window",
        help="a cutover window, START/END or START+2h (UTC; repeatable); none: on command",
    ),
]
DowntimeBudget = Annotated[
    str, typer.Option("--downtime-budget", help="the longest the source may be fenced: 30s, 5m")
]
LagMaxBytes = Annotated[
    str | None, typer.Option("--lag-max-bytes", help="ready when lag ≤ this (16MiB)")
]
LagMaxSeconds = Annotated[
    str | None,
    typer.Option("--lag-max-seconds", help="ready when lag ≤ this (default: half the budget)"),
]
LagHold = Annotated[str, typer.Option("--lag-hold", help="for this long, continuously")]
PauseAfter = Annotated[str, typer.Option("--pause-after", help="pause after this phase, or never")]
Participants = Annotated[
    list[str] | None,
    typer.Option("--participant", help="a tool that must ack the drain (repeatable)"),
]
OptionPairs = Annotated[
    list[str] | None, typer.Option("--option", help="a method option, name=value (repeatable)")
]
AckTimeout = Annotated[str, typer.Option("--ack-timeout", help="how long participants have to ack")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why, for the record")]
Timeout = Annotated[str, typer.Option("--timeout", help="how long to follow (30s, 5m, 1h)")]


def _bus(nats_url: str | None, state_dir: Any) -> NatsSettings:
    return resolve_nats(nats_url, find_state_dir(state_dir))


@migrate_app.command("advise")
def advise_cmd(
    source: DatabaseArg,
    size: Annotated[str, typer.Option("--size", help="the source's size, indexes too (500GiB)")],
    bandwidth: Annotated[
        str, typer.Option("--bandwidth", help="usable throughput source → target (100MiB/s)")
    ],
    write_rate: Annotated[
        str, typer.Option("--write-rate", help="redo/WAL the source writes (2MiB/s)")
    ],
    source_version: Annotated[int, typer.Option("--source-version", help="major release")],
    target_version: Annotated[
        int | None, typer.Option("--target-version", help="major release (default: the source's)")
    ] = None,
    engine: Annotated[Engine | None, typer.Option("--engine", help="default: SOURCE's")] = None,
    downtime_budget: DowntimeBudget = "60s",
    window: Annotated[
        str | None,
        typer.Option("--window", help="the cutover window: its length (2h), or START/END"),
    ] = None,
    scope: Annotated[Scope, typer.Option("--scope", help="one database or the whole cluster")] = (
        Scope.DATABASE
    ),
    source_charset: Annotated[str, typer.Option("--source-charset")] = "UTF8",
    target_charset: Annotated[
        str | None, typer.Option("--target-charset", help="default: the source's")
    ] = None,
    source_endianness: Annotated[
        Endianness | None,
        typer.Option("--source-endianness", help="default: the source platform's, else little"),
    ] = None,
    target_endianness: Annotated[
        Endianness | None,
        typer.Option(
            "--target-endianness", help="default: the target platform's, else the source's"
        ),
    ] = None,
    source_platform: Annotated[
        str | None,
        typer.Option(
            "--source-platform", help="Oracle: V$DATABASE.PLATFORM_NAME ('Linux x86 64-bit')"
        ),
    ] = None,
    target_platform: Annotated[
        str | None, typer.Option("--target-platform", help="default: the source's")
    ] = None,
    source_nchar_charset: Annotated[
        str | None, typer.Option("--source-nchar-charset", help="Oracle: NLS_NCHAR_CHARACTERSET")
    ] = None,
    target_nchar_charset: Annotated[
        str | None, typer.Option("--target-nchar-charset", help="default: the source's")
    ] = None,
    schemas: Annotated[
        list[str] | None,
        typer.Option(
            "--schema", help="Oracle: a schema to move, not the whole database (repeatable)"
        ),
    ] = None,
    encrypted: Annotated[bool, typer.Option("--encrypted", help="TDE or an encrypting fork")] = (
        False
    ),
    multitenant: Annotated[bool, typer.Option("--multitenant", help="Oracle CDB with PDBs")] = (
        False
    ),
    databases_in_cluster: Annotated[
        int, typer.Option("--databases-in-cluster", help="databases (PDBs) in the cluster")
    ] = 1,
    managed_source: Annotated[
        bool, typer.Option("--managed-source", help="a managed cloud database (RDS and the like)")
    ] = False,
    tables_without_identity: Annotated[
        list[str] | None,
        typer.Option(
            "--table-without-identity",
            help="schema.table with no primary key and no replica identity (repeatable)",
        ),
    ] = None,
    unlogged_tables: Annotated[
        list[str] | None,
        typer.Option("--unlogged-table", help="schema.table that is UNLOGGED (repeatable)"),
    ] = None,
    large_objects: Annotated[
        int, typer.Option("--large-objects", help="large objects in the source database")
    ] = 0,
    missing_extensions: Annotated[
        list[str] | None,
        typer.Option(
            "--missing-extension",
            help="an extension the source uses that the target lacks (repeatable)",
        ),
    ] = None,
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Which methods fit SOURCE's move, with estimated duration and downtime, and why the others
    are ruled out (asks the planner's advisor with the facts given)."""
    if window is None:
        window_s = None
    elif "/" in window or "+" in window:
        w = parse_window(window)
        window_s = (w.end - w.start).total_seconds()
    else:
        window_s = parse_duration(window, "--window")
    facts: dict[str, Any] = {
        "source_version": source_version,
        "target_version": target_version if target_version is not None else source_version,
        "size_bytes": parse_size(size, "--size"),
        "write_rate_bytes_s": parse_size(write_rate, "--write-rate"),
        "bandwidth_bytes_s": parse_size(bandwidth, "--bandwidth"),
        **_platforms(source_platform, target_platform, source_endianness, target_endianness),
        "source_nchar_charset": source_nchar_charset,
        "target_nchar_charset": target_nchar_charset or source_nchar_charset,
        "schemas": [s.upper() for s in schemas or []],
        "source_charset": source_charset,
        "target_charset": target_charset or source_charset,
        "encrypted": encrypted,
        "multitenant": multitenant,
        "databases_in_cluster": databases_in_cluster,
        "managed_source": managed_source,
        "tables_without_identity": tables_without_identity or [],
        "unlogged_tables": unlogged_tables or [],
        "large_objects": large_objects,
        "extensions_missing_on_target": missing_extensions or [],
    }
    constraints = {
        "downtime_budget_s": parse_duration(downtime_budget, "--downtime-budget"),
        "window_s": window_s,
        "scope": scope,
    }

    def question(engine_name: Engine) -> AdviceRequest:
        try:
            return AdviceRequest.model_validate(
                {"facts": {**facts, "engine": engine_name}, "constraints": constraints}
            )
        except ValidationError as exc:
            raise typer.BadParameter(_explain(exc)) from None

    # Checked before connecting with a stand-in engine, so a bad value never waits on the bus.
    asked = question(engine or Engine.POSTGRES)
    bus = _bus(nats_url, state_dir)

    async def work(nc: Client, planner: PlannerClient) -> tuple[AdviceRequest, Advice]:
        final = asked if engine else question((await planner.resolve(source)).engine)
        return final, await ask_planner(nc, ADVISE_SUBJECT, final, Advice)

    final, advice = run_with_planner(bus, work)
    if output is OutputFormat.JSON:
        emit_json(advice)
    else:
        render_advice(source, final.facts, advice)
    raise typer.Exit(0 if advice.ranked else 1)


def _platforms(
    source: str | None,
    target: str | None,
    source_endianness: Endianness | None,
    target_endianness: Endianness | None,
) -> dict[str, Any]:
    """Each side's platform and byte order; a byte order not given is the known platform's
    (V$TRANSPORTABLE_PLATFORM), else the source's, else little."""
    target = target or source
    source_endianness = (
        source_endianness or PLATFORM_ENDIANNESS.get((source or "").lower()) or Endianness.LITTLE
    )
    target_endianness = (
        target_endianness
        or (PLATFORM_ENDIANNESS.get((target or "").lower()) if target != source else None)
        or source_endianness
    )
    return {
        "source_platform": source,
        "target_platform": target,
        "source_endianness": source_endianness,
        "target_endianness": target_endianness,
    }


def _args(**given: Any) -> MigrationArgs:
    given["windows"] = given["windows"] or []
    given["participants"] = given["participants"] or []
    given["options"] = given["options"] or []
    return MigrationArgs(**given)


@migrate_app.command("plan")
def plan_cmd(
    source: DatabaseArg,
    to: To,
    node: NodeOpt,
    method: MethodOpt,
    data_dir: DataDir = None,
    port: PortOpt = None,
    release: ReleaseOpt = None,
    target_name: TargetName = None,
    window: Windows = None,
    downtime_budget: DowntimeBudget = "60s",
    lag_max_bytes: LagMaxBytes = None,
    lag_max_seconds: LagMaxSeconds = None,
    lag_hold: LagHold = "60s",
    pause_after: PauseAfter = "ready",
    participant: Participants = None,
    option: OptionPairs = None,
    ack_timeout: AckTimeout = "5m",
    reason: ReasonOpt = "tidemark migrate",
    migration_id: NewMigrationId = None,
    output: OutputOption = OutputFormat.TEXT,
) -> None:
    """Check and print the migration request `start` would send; nothing is sent."""
    request = build_request(
        _args(
            to=to,
            node=node,
            method=method,
            data_dir=data_dir,
            port=port,
            release=release,
            target_name=target_name,
            windows=window,
            downtime_budget=downtime_budget,
            lag_max_bytes=lag_max_bytes,
            lag_max_seconds=lag_max_seconds,
            lag_hold=lag_hold,
            pause_after=pause_after,
            participants=participant,
            options=option,
            ack_timeout=ack_timeout,
            reason=reason,
            migration_id=migration_id,
        )
    )
    check_locally(request, source)
    if output is OutputFormat.JSON:
        emit_json(request_document(source, request))
        return
    render_request(source, request)
    console.print(
        "nothing was sent; `migrate start` with the same flags sends it (with a new id unless "
        "--id is given)",
        highlight=False,
    )


def _stops_start(pause_after: MigrationPhase | None) -> Callable[[Envelope[Any]], bool]:
    def stop(event: Envelope[Any]) -> bool:
        data = event.data
        if isinstance(data, MigrationCompleted | MigrationFailed | MigrationRolledBack):
            return True
        if isinstance(data, MigrationReady):
            return pause_after is MigrationPhase.READY
        return isinstance(data, MigrationPhaseChanged) and (
            data.paused or data.phase in (MigrationPhase.ABORTED, MigrationPhase.ROLLED_BACK)
        )

    return stop


@migrate_app.command("start")
def start_cmd(
    source: DatabaseArg,
    to: To,
    node: NodeOpt,
    method: MethodOpt,
    data_dir: DataDir = None,
    port: PortOpt = None,
    release: ReleaseOpt = None,
    target_name: TargetName = None,
    window: Windows = None,
    downtime_budget: DowntimeBudget = "60s",
    lag_max_bytes: LagMaxBytes = None,
    lag_max_seconds: LagMaxSeconds = None,
    lag_hold: LagHold = "60s",
    pause_after: PauseAfter = "ready",
    participant: Participants = None,
    option: OptionPairs = None,
    ack_timeout: AckTimeout = "5m",
    reason: ReasonOpt = "tidemark migrate",
    migration_id: NewMigrationId = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="return once the planner has taken the request")
    ] = False,
    timeout: Timeout = "7d",
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Send the migration request, then follow the migration until it is ready (or paused),
    completed or failed; --detach returns once the planner has taken it."""
    request = build_request(
        _args(
            to=to,
            node=node,
            method=method,
            data_dir=data_dir,
            port=port,
            release=release,
            target_name=target_name,
            windows=window,
            downtime_budget=downtime_budget,
            lag_max_bytes=lag_max_bytes,
            lag_max_seconds=lag_max_seconds,
            lag_hold=lag_hold,
            pause_after=pause_after,
            participants=participant,
            options=option,
            ack_timeout=ack_timeout,
            reason=reason,
            migration_id=migration_id,
        )
    )
    check_locally(request, source)
    follow_s = parse_duration(timeout, "--timeout")
    text = output is OutputFormat.TEXT
    bus = _bus(nats_url, state_dir)

    async def work(nc: Client, planner: PlannerClient) -> int:
        ref = await planner.resolve(source)
        check_locally(request, ref)  # now with the source's engine, as the planner knows it
        if text:
            render_request(source, request)
        stop = (
            (lambda e: isinstance(e.data, MigrationRequested | MigrationFailed))
            if detach
            else _stops_start(request.pause_after)
        )
        seen: list[Envelope[Any]] = []
        async with watching_migration(nc, source, request.target) as queue:
            asking = asyncio.create_task(planner.request(request, ref, timeout=follow_s))
            following = asyncio.create_task(
                follow_migration(
                    queue, request.migration_id, stop=stop, timeout=follow_s, show=text, seen=seen
                )
            )
            try:
                answer, followed = await answer_and_follow(
                    asking, following, seen, quiet_s=planner.timeout, text=text
                )
            finally:
                asking.cancel()
                following.cancel()
        if followed is None:  # rejected: the reason was shown, nothing was started
            if not text:
                emit_json({**request_document(source, request), "answer": answer, "events": []})
            return 1
        code, said = _start_outcome(followed, source, detach=detach)
        if text:
            console.print(said, highlight=False)
        else:
            emit_json(
                {
                    **request_document(source, request),
                    "answer": answer,
                    "events": _events_json(followed.events),
                    "ended": followed.ended,
                }
            )
        return code

    raise typer.Exit(run_with_planner(bus, work))


def _start_outcome(followed: Followed, source: str, *, detach: bool) -> tuple[int, str]:
    last = followed.last
    if detach:
        if last is not None and isinstance(last.data, MigrationFailed):
            return ending(last.data, source) or (1, "")
        if followed.ended:
            return 0, f"follow it with `tidemark migrate status {source}`"
        return 0, (
            "[yellow]! accepted, but migration.requested was not seen yet[/]; "
            f"`tidemark migrate status {source}` shows it"
        )
    if not followed.ended or last is None:
        return 1, (
            "[yellow]! still running; stopped waiting (it goes on without us): "
            f"`tidemark migrate status {source}`[/]"
        )
    said = ending(last.data, source)
    return said if said is not None else (0, "")


@migrate_app.command("status")
def status_cmd(
    source: Annotated[
        str | None,
        typer.Argument(
            help="the source database's uid, or a program's name (default: every migration)",
            callback=lambda v: None if v is None else check_uid(v),
        ),
    ] = None,
    migration_id: Annotated[str | None, typer.Option("--id", help="one migration")] = None,
    active: Annotated[bool, typer.Option("--active", help="unfinished migrations only")] = False,
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Migrations as the planner holds them; one in detail: its phase history, what it waits
    for, lag, and its downtime estimate against the budget. A migration program's name
    (`migrate program start`) shows the program: one row per database."""
    question = MigrationStatusRequest(
        source=source, migration_id=parse_migration_id(migration_id), include_finished=not active
    )
    bus = _bus(nats_url, state_dir)
    if source is not None and migration_id is None:
        from services.cli.programcmds import program_status  # it imports this module

        if program_status(source, output, bus):
            return
    reply = run_with_planner(
        bus, lambda nc, _p: ask_planner(nc, STATUS_SUBJECT, question, MigrationStatusReply)
    )
    if output is OutputFormat.JSON:
        emit_json(reply)
    elif not reply.migrations:
        console.print(
            f"no {'unfinished ' if active else ''}migrations{f' of {source}' if source else ''}"
        )
    elif len(reply.migrations) == 1 and (migration_id or source):
        render_migration(reply.migrations[0])
    else:
        render_migrations(reply)
    if migration_id is not None and not reply.migrations:
        raise typer.Exit(1)


def _control(
    name: str,
    source: str,
    migration_id: str | None,
    *,
    extra: dict[str, Any],
    timeout: str,
    output: OutputFormat,
    state_dir: Any,
    nats_url: str | None,
    yes: bool = True,
    follow: bool = False,
) -> None:
    control = CONTROLS[name]
    chosen_id = parse_migration_id(migration_id)
    wait_s = parse_duration(timeout, "--timeout")
    text = output is OutputFormat.TEXT
    if not yes and not sys.stdin.isatty():
        console.print(
            f"[red]✗ refused[/]: a {name} of {source}'s migration needs a confirmation; no "
            "terminal to confirm at: add --yes. Nothing was sent.",
            highlight=False,
        )
        raise typer.Exit(1)
    bus = _bus(nats_url, state_dir)
    question = MigrationStatusRequest(
        source=source,
        migration_id=chosen_id,
        include_finished=chosen_id is not None or name == "rollback",
    )

    async def work(nc: Client, planner: PlannerClient) -> int:
        reply = await ask_planner(nc, STATUS_SUBJECT, question, MigrationStatusReply)
        try:
            view = choose_migration(
                reply.migrations, source, chosen_id, take_completed=name == "rollback"
            )
        except NoSingleMigration as exc:
            console.print(f"[red]✗ {escape(str(exc))}[/]", highlight=False)
            return 1
        if name == "pause" and view.paused:
            console.print(f"{view.migration_id} is already paused ({_phase_cell(view)})")
            return 0
        if name == "resume" and not view.paused:
            console.print(
                f"[red]✗ {view.migration_id} is not paused[/] ({_phase_cell(view)}"
                + (f", waiting for {view.waiting}" if view.waiting else "")
                + ")",
                highlight=False,
            )
            return 1
        if name in ("abort", "rollback"):
            confirm(name, consequence(name, view), source, yes=yes)
        command = control.command.model_validate(
            {"migration_id": view.migration_id, "target": view.target, **extra}
        )
        async with watching_migration(nc, source, view.target) as queue:
            answer = await planner.request(command, source)
            if isinstance(answer, RequestRejected):
                if text:
                    render_answer(answer)
                else:
                    emit_json({"migration": view, "answer": answer, "events": []})
                return 1
            if text:
                render_answer(answer)

            def confirmed(event: Envelope[Any]) -> bool:
                return isinstance(event.data, MigrationFailed) or confirms(
                    event, control, answer.command_id
                )

            seen = await follow_migration(
                queue, view.migration_id, stop=confirmed, timeout=wait_s, show=False
            )
            following = follow and seen.ended and not isinstance(seen.last_data, MigrationFailed)
            if following:
                if text:
                    _, said = _control_outcome(name, control, seen, view, wait_s)
                    console.print(said, highlight=False)
                more = await follow_migration(
                    queue,
                    view.migration_id,
                    stop=_stops_start(None),
                    timeout=7 * 86400.0,
                    show=text,
                )
                seen = Followed(seen.events + more.events, more.ended)
        code, said = _control_outcome(name, control, seen, view, wait_s, followed=following)
        if text:
            console.print(said, highlight=False)
        else:
            emit_json(
                {
                    "migration": view,
                    "answer": answer,
                    "events": _events_json(seen.events),
                    "confirmed": seen.ended,
                }
            )
        return code

    raise typer.Exit(run_with_planner(bus, work))


def _control_outcome(
    name: str,
    control: Control,
    seen: Followed,
    view: MigrationView,
    wait_s: float,
    *,
    followed: bool = False,
) -> tuple[int, str]:
    """Exit code and sentence once a control command's wait ends (`followed`: and then the
    migration was followed to its next stop)."""
    last = seen.last
    if not seen.ended or last is None:
        return 1, (
            f"[yellow]! {name} accepted, but no event confirmed it within {span(wait_s)}[/]: "
            f"waiting for {control.awaited}; `tidemark migrate status {view.source} --id "
            f"{view.migration_id}` shows where it is"
        )
    said = ending(last.data, view.source)
    if said is not None and (followed or isinstance(last.data, MigrationFailed)):
        return said
    if said is not None and name == "rollback":
        return 0, said[1]  # the rollback asked for, done: this command's success
    line = describe(last.data)
    return 0, f"[green]✓ {control.done}[/]" + (f" ({escape(line)})" if line else "")


@migrate_app.command("pause")
def pause_cmd(
    source: DatabaseArg,
    migration_id: MigrationIdOpt = None,
    timeout: Timeout = "10m",
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Pause SOURCE's migration at the end of its current phase; waits until it has paused."""
    _control(
        "pause",
        source,
        migration_id,
        extra={},
        timeout=timeout,
        output=output,
        state_dir=state_dir,
        nats_url=nats_url,
    )


@migrate_app.command("resume")
def resume_cmd(
    source: DatabaseArg,
    migration_id: MigrationIdOpt = None,
    pause_after: Annotated[
        str | None, typer.Option("--pause-after", help="a new pause point, or never")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="then follow it until it stops again")
    ] = False,
    timeout: Timeout = "2m",
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Resume SOURCE's paused migration (optionally with a new --pause-after)."""
    extra: dict[str, Any] = {}
    if pause_after is not None:
        # A resume without a pause point keeps the one the request set: "never" is not a value
        # a resume can carry.
        extra["pause_after"] = parse_pause_after(pause_after)
        if extra["pause_after"] is None:
            raise typer.BadParameter("resume --pause-after takes a phase; `never` is for start")
    _control(
        "resume",
        source,
        migration_id,
        extra=extra,
        timeout=timeout,
        output=output,
        state_dir=state_dir,
        nats_url=nats_url,
        follow=follow,
    )


@migrate_app.command("cutover")
def cutover_cmd(
    source: DatabaseArg,
    migration_id: MigrationIdOpt = None,
    now: Annotated[
        bool, typer.Option("--now", help="do not wait for a window (only if none was given)")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="then follow it until it completes or fails")
    ] = False,
    timeout: Timeout = "2m",
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Cut SOURCE's ready migration over, at its next window (or --now)."""
    _control(
        "cutover",
        source,
        migration_id,
        extra={"wait_for_window": not now},
        timeout=timeout,
        output=output,
        state_dir=state_dir,
        nats_url=nats_url,
        follow=follow,
    )


Yes = Annotated[bool, typer.Option("--yes", help="confirm without a prompt")]


@migrate_app.command("abort")
def abort_cmd(
    source: DatabaseArg,
    migration_id: MigrationIdOpt = None,
    yes: Yes = False,
    reason: Annotated[str, typer.Option("--reason", help="why, for the record")] = (
        "aborted on request"
    ),
    timeout: Timeout = "10m",
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Abort SOURCE's migration before the point of no return; the source keeps serving."""
    _control(
        "abort",
        source,
        migration_id,
        extra={"reason": reason},
        timeout=timeout,
        output=output,
        state_dir=state_dir,
        nats_url=nats_url,
        yes=yes,
    )


@migrate_app.command("rollback")
def rollback_cmd(
    source: DatabaseArg,
    migration_id: MigrationIdOpt = None,
    yes: Yes = False,
    reason: Annotated[str, typer.Option("--reason", help="why, for the record")] = (
        "rolled back on request"
    ),
    timeout: Timeout = "30m",
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """After the point of no return, make SOURCE (the old source) the primary again."""
    _control(
        "rollback",
        source,
        migration_id,
        extra={"reason": reason},
        timeout=timeout,
        output=output,
        state_dir=state_dir,
        nats_url=nats_url,
        yes=yes,
    )


def register(app: typer.Typer) -> None:
    from services.cli import programcmds  # it imports this module

    programcmds.register(migrate_app)
    app.add_typer(migrate_app, name="migrate")
