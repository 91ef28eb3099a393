"""`tidemark migrate program …` and `tidemark migrate status PROGRAM`: migration programs (waves).

    program start FILE   migration.program.request   every entry checked here as `migrate start`
                                                     checks one, then sent; the planner's
                                                     .accepted (or .rejected, naming the entry)
    status PROGRAM       tm.qry.planner.program      one table: each database, its phase, its
                                                     window, what it waits for, its downtime

FILE is TOML (or JSON, by its `.json` suffix): the program's name and limits, `[defaults]` for
every entry, and one `[[entries]]` table per database, with the keys of `migrate start`'s flags
(`to`, `node`, `method`, `windows`, `downtime_budget`, `lag_max_bytes`…) and its `source`:

    program = "wave-3"
    max_per_source_node = 2
    max_per_target_node = 2

    [defaults]
    node = "db-node-2"
    method = "physical-stream"
    downtime_budget = "30s"
    lag_max_bytes = "16MiB"

    [[entries]]
    source = "orders-db"
    to = "orders-db-new"
    data_dir = "/var/lib/postgresql/orders-new"
    windows = ["2026-12-08T01:00Z+2h"]

Each entry's migration id is `program_migration_id(program, position)`: known before the
program runs, and the same for every send of the same file.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from schemas import ContractError, decode, envelope
from schemas.messages import (
    CutoverWindow,
    MigrationMethod,
    MigrationPhase,
    ProgramAccepted,
    ProgramEntryView,
    ProgramRejected,
    ProgramStatusReply,
    ProgramStatusRequest,
    ProgramView,
    RequestMigrationProgram,
)
from schemas.messages.migrations import METHOD_ENGINE
from schemas.messages.programs import ProgramEntry, program_migration_id
from services.cli.locate import StateDir
from services.cli.migratecmds import (
    MigrationArgs,
    NatsUrl,
    _bus,
    _explain,
    _phase_cell,
    ask_planner,
    build_request,
    check_locally,
    span,
)
from services.cli.output import OutputFormat, OutputOption, emit_json
from services.cli.plannercmds import run_with_planner
from services.cli.querycmds import show_time
from services.cli.stackcmds import console
from services.planner.client import PlannerClient, PlannerError
from services.planner.handlers.queries import QUERY_PREFIX

PROGRAM_SUBJECT = f"{QUERY_PREFIX}.program"

program_app = typer.Typer(
    help="Migration programs (waves): many databases, each its own migration and windows.",
    no_args_is_help=True,
)

_ENTRY_KEYS = {f.name for f in fields(MigrationArgs)} - {"migration_id"}
_LISTS = {"windows", "participants", "options"}


class ProgramFileError(ValueError):
    """The program file is not one: says where and what."""


def read_program_file(path: Path) -> dict[str, Any]:
    """The file's document (TOML, or JSON for `.json`), or `ProgramFileError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProgramFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        document: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProgramFileError(f"{path}: {exc}") from None
    if not isinstance(document, dict):
        raise ProgramFileError(f"{path}: a program file is a table (program, entries…)")
    return document


def _entry_args(position: int, given: dict[str, Any], program: str) -> tuple[str, MigrationArgs]:
    """An entry's source and `migrate start` arguments, or `ProgramFileError` naming it."""
    where = f"entry {position}"
    unknown = sorted(set(given) - _ENTRY_KEYS - {"source"})
    if unknown:
        raise ProgramFileError(
            f"{where}: no key {', '.join(unknown)} (an entry takes source and "
            f"{', '.join(sorted(_ENTRY_KEYS))})"
        )
    for key in ("source", "to", "node", "method"):
        if key not in given:
            raise ProgramFileError(f"{where}: {key} is missing (here or in [defaults])")
    args = dict(given)
    source = str(args.pop("source"))
    options = args.get("options")
    if isinstance(options, dict):  # `options = { jobs = "4" }` as well as ["jobs=4"]
        args["options"] = [f"{k}={v}" for k, v in options.items()]
    for key in _LISTS:
        value = args.get(key, [])
        if not isinstance(value, list):
            raise ProgramFileError(f"{where}: {key} is a list")
        args[key] = [str(v) for v in value]
    try:
        args["method"] = MigrationMethod(args["method"])
    except ValueError:
        known = ", ".join(m.value for m in MigrationMethod)
        raise ProgramFileError(
            f"{where}: method {args['method']!r} is not one of {known}"
        ) from None
    for key, value in list(args.items()):
        if key not in _LISTS and key not in ("method", "port") and value is not None:
            args[key] = str(value)
    args["migration_id"] = str(program_migration_id(program, position))
    return source, MigrationArgs(**args)


def build_program(document: dict[str, Any]) -> tuple[RequestMigrationProgram, list[str]]:
    """The program a file asks for, and each entry's source uid, or `ProgramFileError`."""
    known = {"program", "max_per_source_node", "max_per_target_node", "reason", "defaults"}
    unknown = sorted(set(document) - known - {"entries"})
    if unknown:
        raise ProgramFileError(f"no key {', '.join(unknown)} (a program takes {sorted(known)})")
    program = document.get("program")
    if not isinstance(program, str):
        raise ProgramFileError("program is missing: the program's name (`wave-3`)")
    defaults = document.get("defaults", {})
    entries = document.get("entries")
    if not isinstance(defaults, dict) or not isinstance(entries, list) or not entries:
        raise ProgramFileError("a program has [defaults] (optional) and one or more [[entries]]")
    sources: list[str] = []
    built: list[dict[str, Any]] = []
    for position, given in enumerate(entries, start=1):
        if not isinstance(given, dict):
            raise ProgramFileError(f"entry {position} is not a table")
        source, args = _entry_args(position, {**defaults, **given}, program)
        try:
            request = build_request(args)
        except typer.BadParameter as exc:
            raise ProgramFileError(f"entry {position} ({source}): {exc.message}") from None
        sources.append(source)
        # The source as far as the file knows it; `_resolved` asks the stack for the rest.
        placeholder = {"uid": source, "engine": METHOD_ENGINE[args.method], "name": source}
        built.append({"source": placeholder, "request": request})
    fields_ = {
        k: document[k] for k in ("max_per_source_node", "max_per_target_node") if k in document
    }
    try:
        made = RequestMigrationProgram.model_validate(
            {
                "program_id": program,
                "entries": built,
                "reason": document.get("reason", "tidemark migrate program start"),
                **fields_,
            }
        )
    except ValidationError as exc:
        raise ProgramFileError(_explain(exc)) from None
    return made, sources


async def _resolved(
    planner: PlannerClient, program: RequestMigrationProgram
) -> RequestMigrationProgram:
    """Each entry's source as the stack knows it (engine, name, system id), checked as
    `migrate start` checks its source."""
    entries = []
    for position, entry in enumerate(program.entries, start=1):
        ref = await planner.resolve(entry.source.uid)
        try:
            check_locally(entry.request, ref)
        except typer.BadParameter as exc:
            raise PlannerError(f"entry {position} ({ref.uid}): {exc.message}") from None
        entries.append(ProgramEntry(source=ref, request=entry.request))
    return program.model_copy(update={"entries": entries})


async def send_program(
    nc: Client, planner: PlannerClient, program: RequestMigrationProgram
) -> ProgramAccepted | ProgramRejected:
    """Send the program and wait for its answer (subscribed before it is sent)."""
    message = envelope(program, source=planner.publisher.source)
    answer: asyncio.Future[ProgramAccepted | ProgramRejected] = (
        asyncio.get_running_loop().create_future()
    )

    async def on_answer(msg: Msg) -> None:
        try:
            data = decode(msg.data, subject=msg.subject).data
        except ContractError:
            return
        if (
            isinstance(data, ProgramAccepted | ProgramRejected)
            and data.command_id == message.id
            and not answer.done()
        ):
            answer.set_result(data)

    sub = await nc.subscribe(f"tm.evt.program.*.{program.program_id}", cb=on_answer)
    try:
        await nc.flush()
        await planner.publisher.publish(message)
        return await asyncio.wait_for(answer, planner.timeout)
    except TimeoutError:
        raise PlannerError(
            f"no answer from the planner to program {program.program_id} within "
            f"{planner.timeout:g}s; is the planner running?"
        ) from None
    finally:
        await sub.unsubscribe()


ProgramFile = Annotated[Path, typer.Argument(help="the program: TOML, or JSON by its .json suffix")]


@program_app.command("start")
def start_cmd(
    file: ProgramFile,
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Send the program in FILE: each entry is checked as `migrate start` checks one, then the
    planner checks them all before it starts any (a bad entry refuses the whole program)."""
    try:
        program, _ = build_program(read_program_file(file))
    except ProgramFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="FILE") from None
    bus = _bus(nats_url, state_dir)

    async def work(nc: Client, planner: PlannerClient) -> ProgramAccepted | ProgramRejected:
        return await send_program(nc, planner, await _resolved(planner, program))

    answer = run_with_planner(bus, work)
    if output is OutputFormat.JSON:
        emit_json({"program": program.model_dump(mode="json"), "answer": answer})
    elif isinstance(answer, ProgramRejected):
        code = f" ({answer.code})"
        console.print(f"[red]✗ rejected{code}[/]: {escape(answer.reason)}", highlight=False)
    else:
        console.print(
            f"[green]✓ accepted[/] program {answer.program_id}: {len(answer.entries)} "
            f"databases, at most {answer.max_per_source_node} out of and "
            f"{answer.max_per_target_node} into each node at a time",
            highlight=False,
        )
        for ref in answer.entries:
            console.print(
                f"  {ref.position:>3}  {ref.source} → {ref.target}  {ref.migration_id}",
                highlight=False,
            )
        console.print(f"follow it with `tidemark migrate status {answer.program_id}`")
    raise typer.Exit(1 if isinstance(answer, ProgramRejected) else 0)


# --- `migrate status PROGRAM` ---------------------------------------------------------------


def _window_cell(windows: list[CutoverWindow], now: datetime) -> str:
    """The window that matters now: the open or next one, else the last (all passed)."""
    if not windows:
        return "on command"
    ordered = sorted(windows, key=lambda w: w.start)
    shown = next((w for w in ordered if w.end > now), ordered[-1])
    more = f" (+{len(windows) - 1})" if len(windows) > 1 else ""
    return f"{show_time(shown.start)} +{span((shown.end - shown.start).total_seconds())}{more}"


def _downtime_cell(entry: ProgramEntryView) -> str:
    migration = entry.migration
    if migration is None or migration.downtime_estimate_s is None:
        return ""
    if migration.phase is MigrationPhase.COMPLETED:
        return span(migration.downtime_estimate_s)
    return f"~{span(migration.downtime_estimate_s)} (est.)"


def render_program(view: ProgramView, *, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    counts: dict[str, int] = {}
    for entry in view.entries:
        state = entry.migration.phase.value if entry.migration else entry.state.value
        counts[state] = counts.get(state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    console.print(
        f"[bold]program {view.program_id}[/]: {view.phase.value}; {summary}; at most "
        f"{view.max_per_source_node} out of and {view.max_per_target_node} into each node",
        highlight=False,
    )
    table = Table(title_justify="left")
    for column in ("#", "source → target", "nodes", "phase", "window", "waiting", "downtime"):
        table.add_column(column)
    for entry in view.entries:
        migration = entry.migration
        if migration is not None:
            phase = _phase_cell(migration)
            waiting = migration.waiting or ""
            windows = migration.windows
        else:
            phase = entry.state.value
            waiting = entry.waiting or (entry.refusal.reason if entry.refusal else "")
            windows = []
        table.add_row(
            str(entry.position),
            f"{entry.source} → {entry.target}",
            f"{entry.source_node} → {entry.target_node}",
            phase,
            _window_cell(windows, now) if migration is not None else "",
            escape(waiting),
            _downtime_cell(entry),
        )
    console.print(table)


def program_status(name: str, output: OutputFormat, bus: Any) -> bool:
    """Show the program called `name`, if there is one; False when there is none (the caller
    then reads `name` as a source database)."""
    question = ProgramStatusRequest(program_id=name)

    async def ask(nc: Client, _planner: Any) -> ProgramStatusReply:
        try:
            return await ask_planner(nc, PROGRAM_SUBJECT, question, ProgramStatusReply)
        except PlannerError as exc:
            if isinstance(exc.__cause__, NoRespondersError):
                # No one serves programs (a planner older than them): no program by that
                # name; the migration query that follows says whether a planner runs at all.
                return ProgramStatusReply(programs=[])
            raise

    reply = run_with_planner(bus, ask)
    if not reply.programs:
        return False
    if output is OutputFormat.JSON:
        emit_json(reply)
    else:
        render_program(reply.programs[0])
    return True


def register(migrate_app: typer.Typer) -> None:
    migrate_app.add_typer(program_app, name="program")
