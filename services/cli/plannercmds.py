"""`tidemark policy set|show DB`, `tidemark backup DB` and `tidemark restore DB`: ask the
planner, print its answer, and (with --wait, the default) follow the work to its end.

Input is validated here, against the same contract models the planner uses, before anything
is sent: a bad cron or a clone without a port is a usage error (exit 2), not a dead letter.
A refusal exits 1 and says why, with the nearest restorable points when there are some.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from schemas import ContractError, Envelope, Position, Timeline, decode, lineage_from_key
from schemas.messages import (
    BackupCompleted,
    BackupFailed,
    BackupKind,
    BackupPolicy,
    BackupSpec,
    CloneSpec,
    Compression,
    JobFailed,
    JobProgress,
    RequestAccepted,
    RequestBackup,
    RequestRejected,
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RestoreMode,
    RestoreProgress,
    RestoreTarget,
    SetPolicy,
    TargetImmediate,
    TargetPosition,
)
from services.cli.guardcmds import confirm_in_place, refuse_taken_port
from services.cli.locate import StateDir, find_state_dir
from services.cli.output import OutputFormat, OutputOption, emit_json
from services.cli.progressview import transfer_detail
from services.cli.querycmds import DatabaseArg, ask, parse_target, show_time
from services.cli.schedule import next_run
from services.cli.stackcmds import console, resolve_nats, unreachable
from services.planner.client import PlannerClient, PlannerError
from services.planner.cron import CronError, CronSchedule
from services.settings import NatsSettings
from services.stack.probe import connect_once

T = TypeVar("T")

NatsUrl = Annotated[
    str | None, typer.Option("--nats-url", help="NATS URL (default: the running stack's)")
]
Wait = Annotated[
    bool, typer.Option("--wait/--no-wait", help="follow the work until it ends (default: wait)")
]
Timeout = Annotated[float, typer.Option(help="seconds to wait for the end with --wait")]

policy_app = typer.Typer(help="Backup policies (cron times are UTC).", no_args_is_help=True)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:5]
    )


def run_with_planner(bus: NatsSettings, work: Callable[[Client, PlannerClient], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            nc = await connect_once(bus)
        except Exception as exc:
            raise PlannerError(unreachable(bus, exc)) from exc
        try:
            return await work(nc, PlannerClient(nc))
        finally:
            await nc.close()

    try:
        return asyncio.run(main())
    except PlannerError as exc:
        console.print(f"[red]✗ {exc}[/]")
        raise typer.Exit(1) from None


def render_answer(answer: RequestAccepted | RequestRejected) -> None:
    if isinstance(answer, RequestAccepted):
        console.print(f"[green]✓ accepted[/] {answer.message or answer.ref_id or ''}")
        return
    code = f" ({answer.code})" if answer.code else ""
    console.print(f"[red]✗ rejected{code}[/]: {answer.reason}")
    if answer.nearest_before is not None:
        when = f" ({show_time(answer.nearest_before_time)})" if answer.nearest_before_time else ""
        console.print(f"  nearest before: {answer.nearest_before}{when}")
    if answer.nearest_after is not None:
        when = f" ({show_time(answer.nearest_after_time)})" if answer.nearest_after_time else ""
        console.print(f"  nearest after:  {answer.nearest_after}{when}")


@contextlib.asynccontextmanager
async def watching(nc: Client, uid: str) -> AsyncIterator[asyncio.Queue[Envelope[Any]]]:
    """Every event about `uid`, from before the request is sent (so none is missed)."""
    queue: asyncio.Queue[Envelope[Any]] = asyncio.Queue()

    async def on(msg: Msg) -> None:
        with contextlib.suppress(ContractError):
            queue.put_nowait(decode(msg.data, subject=msg.subject))

    sub = await nc.subscribe(f"tm.evt.*.*.{uid}", cb=on)
    try:
        yield queue
    finally:
        await sub.unsubscribe()


async def follow(
    queue: asyncio.Queue[Envelope[Any]],
    *,
    label: str,
    is_ours: Callable[[Envelope[Any]], bool],
    is_end: Callable[[Envelope[Any]], bool],
    timeout: float,
) -> Envelope[Any]:
    """Show progress of our events until an end event; TimeoutError after `timeout`."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=100, detail="")
        first: tuple[float, int] | None = None  # (when, done) of the first amount reported
        async with asyncio.timeout(timeout):
            while True:
                event = await queue.get()
                if not is_ours(event):
                    continue
                if is_end(event):
                    progress.update(task, completed=100)
                    return event
                data = event.data
                if isinstance(data, JobProgress | RestoreProgress):
                    if data.percent is not None:
                        progress.update(task, completed=data.percent)
                    progress.update(task, description=f"{label}: {data.phase}")
                if isinstance(data, JobProgress) and data.done is not None:
                    now = time.monotonic()
                    first = first or (now, data.done)
                    detail = transfer_detail(
                        data.done, data.total, data.unit, now - first[0], first_done=first[1]
                    )
                    progress.update(task, detail=detail)


#: What `policy set` may change, by option name; a flag not given keeps the stored value.
_CLEARED = ("none", "never")


@policy_app.command("set")
def policy_set(
    database: DatabaseArg,
    full_cron: Annotated[
        str | None, typer.Option(help="full backups, 5 cron fields UTC (new policy: 0 1 * * *)")
    ] = None,
    incremental_cron: Annotated[
        str | None, typer.Option(help="incrementals (Oracle level 1); 'none' to turn off")
    ] = None,
    window_days: Annotated[
        float | None, typer.Option(help="recovery window in days (new policy: 7)")
    ] = None,
    verify_cron: Annotated[
        str | None,
        typer.Option(help="verify the newest backup (new policy: 0 3 * * *); 'never' to turn off"),
    ] = None,
    node: Annotated[
        str | None, typer.Option(help="run backups on this node; 'none': the one hosting it")
    ] = None,
    compression: Annotated[Compression | None, typer.Option()] = None,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Change DATABASE's backup policy: only the fields given change, the others keep their
    stored value (a database with no policy yet starts from the defaults)."""
    changes: dict[str, Any] = {}
    if full_cron is not None:
        changes["full_cron"] = full_cron
    if incremental_cron is not None:
        changes["incremental_cron"] = None if incremental_cron in _CLEARED else incremental_cron
    if window_days is not None:
        changes["recovery_window_days"] = window_days
    if verify_cron is not None:
        changes["verify_cron"] = None if verify_cron in _CLEARED else verify_cron
    if node is not None:
        changes["node"] = None if node in _CLEARED else node
    if compression is not None:
        changes["compression"] = compression
    try:
        BackupPolicy.model_validate({**BackupPolicy().model_dump(), **changes})
    except ValidationError as exc:
        raise typer.BadParameter(_problems(exc)) from None
    for name in ("full_cron", "incremental_cron", "verify_cron"):
        _check_cron(name, changes.get(name))
    bus = resolve_nats(nats_url, find_state_dir(state_dir))

    async def work(_nc: Client, planner: PlannerClient) -> tuple[BackupPolicy, Any]:
        # Read, then write the merged whole: the command carries a full policy, and a field
        # the user did not name must not fall back to its default.
        current = (await planner.policy(database)).policy or BackupPolicy()
        merged = BackupPolicy.model_validate({**current.model_dump(), **changes})
        return merged, await planner.request(SetPolicy(policy=merged), database)

    merged, answer = run_with_planner(bus, work)
    render_answer(answer)
    if isinstance(answer, RequestRejected):
        raise typer.Exit(1)
    _render_policy(database, merged, None)


def _check_cron(name: str, expression: str | None) -> None:
    if expression is None:
        return
    try:
        CronSchedule.parse(expression)
    except CronError as exc:
        raise typer.BadParameter(f"--{name.replace('_', '-')}: {exc}") from None


def policy_document(database: str, policy: BackupPolicy, revision: int | None) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "database": database,
        "revision": revision,
        "policy": policy.model_dump(mode="json"),
        "next_runs": {
            "full": _iso(next_run(policy.full_cron, now)),
            "incremental": _iso(next_run(policy.incremental_cron, now)),
            "verification": _iso(next_run(policy.verify_cron, now)),
        },
    }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _render_policy(database: str, policy: BackupPolicy, revision: int | None) -> None:
    now = datetime.now(UTC)

    def upcoming(expression: str | None) -> str:
        at = next_run(expression, now)
        return "" if at is None else f"   next {at.isoformat()}"

    shown = "" if revision is None else f" (revision {revision})"
    console.print(f"[bold]{database}[/]{shown}", highlight=False)
    console.print(f"  full backups:     {policy.full_cron} UTC{upcoming(policy.full_cron)}")
    console.print(
        f"  incrementals:     {policy.incremental_cron or 'none'}"
        f"{upcoming(policy.incremental_cron)}"
    )
    console.print(f"  recovery window:  {policy.recovery_window_days:g} days")
    console.print(
        f"  verification:     {policy.verify_cron or 'never'}{upcoming(policy.verify_cron)}"
    )
    console.print(f"  compression:      {policy.compression.value}")
    console.print(f"  node:             {policy.node or 'the one hosting it'}")


@policy_app.command("show")
def policy_show(
    database: DatabaseArg,
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Show DATABASE's backup policy and when each schedule runs next (UTC)."""
    bus = resolve_nats(nats_url, find_state_dir(state_dir))
    reply = run_with_planner(bus, lambda _nc, p: p.policy(database))
    if reply.policy is None:
        if output is OutputFormat.JSON:
            emit_json({"database": database, "revision": None, "policy": None, "next_runs": {}})
        else:
            console.print(f"{database}: no backup policy")
        raise typer.Exit(1)
    if output is OutputFormat.JSON:
        emit_json(policy_document(database, reply.policy, reply.revision))
        return
    _render_policy(database, reply.policy, reply.revision)


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")

    @app.command()
    def backup(
        database: DatabaseArg,
        kind: Annotated[BackupKind, typer.Option(help="full or incremental")] = BackupKind.FULL,
        wait: Wait = True,
        timeout: Timeout = 6 * 3600.0,
        state_dir: StateDir = None,
        nats_url: NatsUrl = None,
    ) -> None:
        """Ask the planner for a backup of DATABASE now."""
        try:
            request = RequestBackup(spec=BackupSpec(kind=kind), reason="tidemark backup")
        except ValidationError as exc:
            raise typer.BadParameter(_problems(exc)) from None
        bus = resolve_nats(nats_url, find_state_dir(state_dir))

        async def work(nc: Client, planner: PlannerClient) -> int:
            async with watching(nc, database) as queue:
                answer = await planner.request(request, database)
                render_answer(answer)
                if isinstance(answer, RequestRejected):
                    return 1
                if not wait:
                    return 0
                backup_id = answer.ref_id
                command_id = answer.command_id

                def ours(e: Envelope[Any]) -> bool:
                    return (
                        e.correlation_id == command_id
                        or getattr(e.data, "backup_id", None) == backup_id
                    )

                def end(e: Envelope[Any]) -> bool:
                    return isinstance(e.data, BackupCompleted | BackupFailed | JobFailed)

                done = await follow(
                    queue, label=f"backup {backup_id}", is_ours=ours, is_end=end, timeout=timeout
                )
            if isinstance(done.data, BackupCompleted):
                data = done.data
                console.print(
                    f"[green]✓ backup {data.backup_id}[/]: {data.size_bytes / 2**20:.1f} MiB, "
                    f"consistent at {data.consistent_at}"
                )
                return 0
            console.print(f"[red]✗ backup failed[/]: {done.data.failure.reason}")
            return 1

        raise typer.Exit(_run_work(bus, work))

    @app.command()
    def restore(
        database: DatabaseArg,
        to: Annotated[
            str | None, typer.Option("--to", help="a time (ISO 8601; UTC), or latest")
        ] = None,
        scn: Annotated[int | None, typer.Option("--scn", help="an Oracle SCN")] = None,
        lsn: Annotated[str | None, typer.Option("--lsn", help="a PostgreSQL LSN, X/Y")] = None,
        immediate: Annotated[
            bool, typer.Option("--immediate", help="as soon as the base is consistent")
        ] = False,
        into: Annotated[
            Path | None, typer.Option("--into", help="restore into a clone in this directory")
        ] = None,
        port: Annotated[int | None, typer.Option(help="the clone's port")] = None,
        node: Annotated[str | None, typer.Option(help="the clone's node")] = None,
        timeline: Annotated[
            int | None, typer.Option("--timeline", help="PostgreSQL: restore along this timeline")
        ] = None,
        lineage: Annotated[
            str | None,
            typer.Option("--lineage", help="the lineage's key as `windows` prints it (tl-…)"),
        ] = None,
        in_place: Annotated[
            bool,
            typer.Option("--in-place", help="replace DATABASE itself (stops it; needs --yes)"),
        ] = False,
        yes: Annotated[
            bool, typer.Option("--yes", help="confirm an --in-place restore without a prompt")
        ] = False,
        wait: Wait = True,
        timeout: Timeout = 6 * 3600.0,
        state_dir: StateDir = None,
        nats_url: NatsUrl = None,
    ) -> None:
        """Restore DATABASE to a time, a position (--to latest: the end of the archive), or the
        earliest consistent moment; --timeline/--lineage when the window is on another one."""
        target: RestoreTarget
        latest = to == "latest"
        chosen = parse_lineage(lineage, timeline)
        if immediate:
            if any(v is not None for v in (to, scn, lsn)):
                raise typer.BadParameter("--immediate takes no --to, --scn or --lsn")
            target = TargetImmediate()
        elif latest:
            if scn is not None or lsn is not None:
                raise typer.BadParameter("--to latest takes no --scn or --lsn")
            target = TargetImmediate()  # replaced below by the archive's end, from the catalog
        else:
            target = parse_target(to, scn, lsn)
        try:
            clone = None
            if into is not None or port is not None:
                if into is None or port is None:
                    raise typer.BadParameter("a clone needs both --into DIR and --port N")
                clone = CloneSpec(data_dir=str(into.absolute()), port=port, node=node)
            request = RequestRestore(
                target=target,
                lineage=chosen,
                mode=RestoreMode.CLONE if clone else RestoreMode.IN_PLACE,
                clone=clone,
                reason="tidemark restore",
            )
        except ValidationError as exc:
            raise typer.BadParameter(_problems(exc)) from None
        if clone is not None and in_place:
            raise typer.BadParameter("--in-place replaces DATABASE; --into makes a clone: not both")
        if clone is None:
            shown = "the end of its archive" if latest else _shown_target(target)
            confirm_in_place(database, in_place=in_place, yes=yes, target=shown)
        bus = resolve_nats(nats_url, find_state_dir(state_dir))
        if latest:
            end, on = archive_end(bus, database, chosen)
            console.print(f"latest: {end} on {on.key}", highlight=False)
            request = request.model_copy(
                update={"target": TargetPosition(position=end), "lineage": on}
            )
        if clone is not None and port is not None:
            refuse_taken_port(bus, port, node)

        async def work(nc: Client, planner: PlannerClient) -> int:
            async with watching(nc, database) as queue:
                answer = await planner.request(request, database)
                render_answer(answer)
                if isinstance(answer, RequestRejected):
                    return 1
                if not wait:
                    return 0
                restore_id = answer.ref_id

                def ours(e: Envelope[Any]) -> bool:
                    return str(getattr(e.data, "restore_id", "")) == restore_id

                def end(e: Envelope[Any]) -> bool:
                    return isinstance(e.data, RestoreCompleted | RestoreFailed)

                done = await follow(
                    queue, label="restore", is_ours=ours, is_end=end, timeout=timeout
                )
            if isinstance(done.data, RestoreCompleted):
                data = done.data
                when = f" ({show_time(data.reached_time)})" if data.reached_time else ""
                console.print(
                    f"[green]✓ restored[/] to {data.reached}{when}, open on {data.lineage.key}"
                )
                return 0
            console.print(f"[red]✗ restore failed[/]: {done.data.failure.reason}")
            return 1

        raise typer.Exit(_run_work(bus, work))


def parse_lineage(key: str | None, timeline: int | None) -> Timeline | None:
    """`--timeline N` or `--lineage tl-0000000N` (the key `windows` prints), not both."""
    if key is not None and timeline is not None:
        raise typer.BadParameter("give --timeline or --lineage, not both")
    if timeline is not None:
        if timeline < 1:
            raise typer.BadParameter("--timeline counts from 1")
        return Timeline(id=timeline)
    if key is None:
        return None
    if not key.startswith("tl-"):
        raise typer.BadParameter(
            f"--lineage {key!r}: a PostgreSQL timeline key, e.g. tl-00000002 (Oracle "
            "incarnations are chosen by the planner from the target)"
        )
    try:
        lineage = lineage_from_key(key)
    except ValueError:
        raise typer.BadParameter(f"--lineage {key!r} is not a timeline key") from None
    assert isinstance(lineage, Timeline)
    return lineage


def archive_end(bus: NatsSettings, database: str, on: Timeline | None) -> tuple[Position, Timeline]:
    """The end of the newest restorable window (on `on` if given): what `latest` means."""
    reply = ask(bus, lambda c: c.windows(database))
    windows = [w for w in reply.windows if on is None or w.lineage == on.key]
    if not windows:
        where = f" on {on.key}" if on is not None else ""
        console.print(
            f"[red]✗ {database} has no restorable window{where}: no latest to restore to[/]"
        )
        raise typer.Exit(1)
    newest = max(windows, key=lambda w: (w.end_time is not None, w.end_time, w.end.value))
    if not newest.lineage.startswith("tl-"):
        console.print("[red]✗ --to latest is for PostgreSQL timelines; give --scn for Oracle[/]")
        raise typer.Exit(1)
    return newest.end, Timeline(id=int(newest.lineage[3:], 16))


def _shown_target(target: RestoreTarget) -> str:
    if isinstance(target, TargetImmediate):
        return "the end of its base backup"
    at = getattr(target, "at", None)
    if isinstance(at, datetime):
        return show_time(at)
    return str(getattr(target, "position", target))


def _run_work(bus: NatsSettings, work: Callable[[Client, PlannerClient], Awaitable[int]]) -> int:
    try:
        return run_with_planner(bus, work)
    except TimeoutError:
        console.print("[yellow]! still running; stopped waiting (it goes on without us)[/]")
        return 1
