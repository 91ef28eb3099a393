"""`tidemark policy set|show DB`, `tidemark backup DB` and `tidemark restore DB`: ask the
planner, print its answer, and (with --wait, the default) follow the work to its end.

Input is validated here, against the same contract models the planner uses, before anything
is sent: a bad cron or a clone without a port is a usage error (exit 2), not a dead letter.
A refusal exits 1 and says why, with the nearest restorable points when there are some.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from schemas import ContractError, Envelope, decode
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
)
from services.cli.querycmds import DatabaseArg, parse_target
from services.cli.stackcmds import console, resolve_nats
from services.planner.client import PlannerClient, PlannerError
from services.planner.cron import CronError, CronSchedule
from services.settings import NatsSettings
from services.stack.probe import connect_once

T = TypeVar("T")

StateDir = Annotated[
    Path, typer.Option("--state-dir", envvar="TIDEMARK_STATE_DIR", help="local state of the stack")
]
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
            raise PlannerError(f"cannot reach NATS at {bus.url}: {exc}") from exc
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
        when = (
            f" ({answer.nearest_before_time:%Y-%m-%d %H:%M:%S}Z)"
            if answer.nearest_before_time
            else ""
        )
        console.print(f"  nearest before: {answer.nearest_before}{when}")
    if answer.nearest_after is not None:
        when = (
            f" ({answer.nearest_after_time:%Y-%m-%d %H:%M:%S}Z)"
            if answer.nearest_after_time
            else ""
        )
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
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=100)
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


@policy_app.command("set")
def policy_set(
    database: DatabaseArg,
    full_cron: Annotated[str, typer.Option(help="full backups, 5 cron fields UTC")] = "0 1 * * *",
    incremental_cron: Annotated[
        str | None, typer.Option(help="incrementals (Oracle level 1)")
    ] = None,
    window_days: Annotated[float, typer.Option(help="recovery window in days")] = 7.0,
    verify_cron: Annotated[
        str | None, typer.Option(help="verify the newest backup; 'never' to turn off")
    ] = "0 3 * * *",
    node: Annotated[str | None, typer.Option(help="run backups on this node")] = None,
    compression: Annotated[Compression, typer.Option()] = Compression.NONE,
    state_dir: StateDir = Path(".state"),
    nats_url: NatsUrl = None,
) -> None:
    """Set DATABASE's backup policy."""
    try:
        policy = BackupPolicy(
            full_cron=full_cron,
            incremental_cron=incremental_cron,
            recovery_window_days=window_days,
            verify_cron=None if verify_cron in (None, "never") else verify_cron,
            node=node,
            compression=compression,
        )
    except ValidationError as exc:
        raise typer.BadParameter(_problems(exc)) from None
    _check_crons(policy)
    bus = resolve_nats(nats_url, state_dir)
    answer = run_with_planner(bus, lambda _nc, p: p.request(SetPolicy(policy=policy), database))
    render_answer(answer)
    if isinstance(answer, RequestRejected):
        raise typer.Exit(1)


def _check_crons(policy: BackupPolicy) -> None:
    for name in ("full_cron", "incremental_cron", "verify_cron"):
        expression = getattr(policy, name)
        if expression is None:
            continue
        try:
            CronSchedule.parse(expression)
        except CronError as exc:
            raise typer.BadParameter(f"--{name.replace('_', '-')}: {exc}") from None


@policy_app.command("show")
def policy_show(
    database: DatabaseArg,
    state_dir: StateDir = Path(".state"),
    nats_url: NatsUrl = None,
) -> None:
    """Show DATABASE's backup policy."""
    bus = resolve_nats(nats_url, state_dir)
    reply = run_with_planner(bus, lambda _nc, p: p.policy(database))
    if reply.policy is None:
        console.print(f"{database}: no backup policy")
        raise typer.Exit(1)
    policy = reply.policy
    console.print(f"[bold]{database}[/] (revision {reply.revision})")
    console.print(f"  full backups:     {policy.full_cron} UTC")
    console.print(f"  incrementals:     {policy.incremental_cron or 'none'}")
    console.print(f"  recovery window:  {policy.recovery_window_days:g} days")
    console.print(f"  verification:     {policy.verify_cron or 'never'}")
    console.print(f"  compression:      {policy.compression.value}")
    console.print(f"  node:             {policy.node or 'the one hosting it'}")


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")

    @app.command()
    def backup(
        database: DatabaseArg,
        kind: Annotated[BackupKind, typer.Option(help="full or incremental")] = BackupKind.FULL,
        wait: Wait = True,
        timeout: Timeout = 6 * 3600.0,
        state_dir: StateDir = Path(".state"),
        nats_url: NatsUrl = None,
    ) -> None:
        """Ask the planner for a backup of DATABASE now."""
        try:
            request = RequestBackup(spec=BackupSpec(kind=kind), reason="tidemark backup")
        except ValidationError as exc:
            raise typer.BadParameter(_problems(exc)) from None
        bus = resolve_nats(nats_url, state_dir)

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
        to: Annotated[str | None, typer.Option("--to", help="a time (ISO 8601; UTC)")] = None,
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
        wait: Wait = True,
        timeout: Timeout = 6 * 3600.0,
        state_dir: StateDir = Path(".state"),
        nats_url: NatsUrl = None,
    ) -> None:
        """Restore DATABASE to a time, a position, or the earliest consistent moment."""
        target: RestoreTarget
        if immediate:
            if any(v is not None for v in (to, scn, lsn)):
                raise typer.BadParameter("--immediate takes no --to, --scn or --lsn")
            target = TargetImmediate()
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
                mode=RestoreMode.CLONE if clone else RestoreMode.IN_PLACE,
                clone=clone,
                reason="tidemark restore",
            )
        except ValidationError as exc:
            raise typer.BadParameter(_problems(exc)) from None
        bus = resolve_nats(nats_url, state_dir)

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
                when = f" ({data.reached_time:%Y-%m-%d %H:%M:%S}Z)" if data.reached_time else ""
                console.print(
                    f"[green]✓ restored[/] to {data.reached}{when}, open on {data.lineage.key}"
                )
                return 0
            console.print(f"[red]✗ restore failed[/]: {done.data.failure.reason}")
            return 1

        raise typer.Exit(_run_work(bus, work))


def _run_work(bus: NatsSettings, work: Callable[[Client, PlannerClient], Awaitable[int]]) -> int:
    try:
        return run_with_planner(bus, work)
    except TimeoutError:
        console.print("[yellow]! still running; stopped waiting (it goes on without us)[/]")
        return 1
