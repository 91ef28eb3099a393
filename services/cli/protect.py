"""`tidemark protect DB` and `tidemark unprotect DB`: one command from a running PostgreSQL
cluster to a database archiving through the stack, proven.

The steps, in order (each printed as it ends; the first three only look):

    inspect    connect over the socket as the OS user; read the system identifier, the data
               directory, archive_mode and archive_command. Refuse, with nothing changed, when
               archive_command belongs to another tool, or archive_mode is off and --restart
               was not given (turning it on restarts PostgreSQL).
    spool      the spool under <state>/spool/<uid>, walpush under <state>/tools, both reachable
               by the database OS user.
    configure  ALTER SYSTEM archive_mode = on and archive_command = walpush into the spool;
               reload (restart with --restart when archive_mode was off).
    declare    the database's one declaration in <state>/protected.json; the archiver and the
               executor restart to read it, and the executor's heartbeat names the database.
    switch     pg_switch_wal(); wait until that segment is stored (log.archived) and indexed
               (the catalog answers for it): what `pgbackrest check` proves.
    backup     the first base backup through the planner (--no-backup skips it).

`restore_command` is not set here: a restore writes the one it needs (wal-fetch on
the restore's own fetch server) and removes it afterwards.

Oracle: the engine cannot run here; `protect --engine oracle` prints the commands it would run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from nats.aio.msg import Msg

from services.cli.locate import StateDir, find_state_dir
from services.cli.querycmds import DatabaseArg
from services.cli.stackcmds import console, resolve_nats, unreachable
from services.stack.declarations import Protected, read_protected, write_protected
from services.stack.embedded import read_stack_file

ORACLE_STEPS = (
    "SELECT log_mode FROM v$database;  -- must be ARCHIVELOG",
    "ALTER SYSTEM SET log_archive_dest_2='LOCATION=<spool> VALID_FOR=(ONLINE_LOGFILES,"
    "PRIMARY_ROLE)' SCOPE=BOTH;",
    "ALTER SYSTEM ARCHIVE LOG CURRENT;  -- then wait for the log in the store and the catalog",
    "RMAN> BACKUP INCREMENTAL LEVEL 0 DATABASE;  -- through `tidemark backup DB`",
)


class ProtectRefused(RuntimeError):
    """Protecting cannot go on; the message says why and what was (not) changed."""


def _hosted_target(entry: Protected) -> Any:
    from services.engines.postgres.sql import PgTarget

    return PgTarget.of(entry.declaration().hosted())


async def _sql(target: Any, text: str, **variables: str) -> list[list[str]]:
    from services.engines.postgres.sql import query

    return await query(target, text, variables=variables or None)


def _restart_services(state_dir: Path, names: tuple[str, ...]) -> dict[str, int]:
    """SIGTERM `names`; the stack's supervisor starts them again (with the new declarations)."""
    info = read_stack_file(state_dir) or {}
    pids = info.get("services") if isinstance(info.get("services"), dict) else {}
    assert isinstance(pids, dict)
    old = {n: int(pids[n]) for n in names if n in pids}
    for pid in old.values():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    return old


async def _wait_restarted(state_dir: Path, old: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_stack_file(state_dir) or {}
        pids = info.get("services") if isinstance(info.get("services"), dict) else {}
        assert isinstance(pids, dict)
        if all(pids.get(n) not in (None, pid) for n, pid in old.items()):
            return
        await asyncio.sleep(0.2)
    raise ProtectRefused(f"the stack did not restart {', '.join(old)} within {timeout:g}s")


def register(app: typer.Typer) -> None:
    @app.command()
    def protect(
        database: DatabaseArg,
        data_dir: Annotated[
            Path | None, typer.Option("--data-dir", help="the cluster's data directory")
        ] = None,
        port: Annotated[int, typer.Option(help="the cluster's port")] = 5432,
        socket_dir: Annotated[Path, typer.Option(help="its Unix socket directory")] = Path(
            "/var/run/postgresql"
        ),
        os_user: Annotated[str, typer.Option(help="the OS user that runs it")] = "postgres",
        name: Annotated[str | None, typer.Option(help="a name to show (default: DB)")] = None,
        engine: Annotated[str, typer.Option(help="postgres, or oracle to print the steps")] = (
            "postgres"
        ),
        restart: Annotated[
            bool, typer.Option("--restart", help="restart PostgreSQL if archive_mode is off")
        ] = False,
        backup: Annotated[
            bool, typer.Option("--backup/--no-backup", help="take the first base backup")
        ] = True,
        timeout: Annotated[float, typer.Option(help="seconds to wait for each proof")] = 120.0,
        state_dir: StateDir = None,
    ) -> None:
        """Protect a running database: archiving into the stack, proven, then a first backup."""
        if engine == "oracle":
            console.print(f"Oracle cannot run here; to protect {database} Tidemark would run:")
            for step in ORACLE_STEPS:
                console.print(f"  {step}", highlight=False, soft_wrap=True)
            return
        if engine != "postgres":
            raise typer.BadParameter("--engine is postgres or oracle")
        if data_dir is None:
            raise typer.BadParameter("--data-dir is required for PostgreSQL")
        state = find_state_dir(state_dir).absolute()
        started = time.monotonic()
        try:
            asyncio.run(
                _protect(
                    state,
                    database,
                    name or database,
                    data_dir.absolute(),
                    port,
                    socket_dir.absolute(),
                    os_user,
                    restart=restart,
                    backup=backup,
                    timeout=timeout,
                )
            )
        except ProtectRefused as exc:
            console.print(f"[red]✗ {exc}[/]", highlight=False)
            raise typer.Exit(1) from None
        console.print(
            f"[green]✓ {database} is protected[/] in {time.monotonic() - started:.1f}s",
            highlight=False,
        )

    @app.command()
    def unprotect(
        database: DatabaseArg,
        restart: Annotated[
            bool, typer.Option("--restart", help="restart PostgreSQL to turn archive_mode off")
        ] = False,
        state_dir: StateDir = None,
    ) -> None:
        """Stop archiving DB through the stack; the archive and the catalog are left as they are."""
        state = find_state_dir(state_dir).absolute()
        try:
            asyncio.run(_unprotect(state, database, restart=restart))
        except ProtectRefused as exc:
            console.print(f"[red]✗ {exc}[/]", highlight=False)
            raise typer.Exit(1) from None


def _restart_argv(target: Any, data_dir: str) -> list[str]:
    log = os.path.join(data_dir, "tidemark-restart.log")
    return [target.tool("pg_ctl"), "restart", "-D", data_dir, "-m", "fast", "-w", "-l", log]


def _same_dir(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


async def _protect(
    state: Path,
    uid: str,
    name: str,
    data_dir: Path,
    port: int,
    socket_dir: Path,
    os_user: str,
    *,
    restart: bool,
    backup: bool,
    timeout: float,
) -> None:
    from services.engines.base import EngineError
    from services.engines.postgres.oscmd import check_traversable, run_as, system_python
    from services.engines.postgres.spool import Spool, install_walpush

    if read_stack_file(state) is None:
        raise ProtectRefused(f"no stack found at {state}: start it with `tidemark up` first")
    entry = Protected(
        uid=uid,
        name=name,
        system_id=0,
        data_dir=str(data_dir),
        port=port,
        socket_dir=str(socket_dir),
        os_user=os_user,
        spool_dir=str(state / "spool" / uid),
    )
    # -- inspect: nothing changes before every refusal has had its chance.
    try:
        target = _hosted_target(entry)
        rows = await _sql(
            target,
            "SELECT system_identifier FROM pg_control_system();\n"
            "SHOW data_directory;\nSHOW archive_mode;\nSHOW archive_command;",
        )
    except EngineError as exc:
        raise ProtectRefused(f"cannot inspect {uid} on {socket_dir} port {port}: {exc}") from None
    system_id, shown_dir, archive_mode, archive_command = (r[0] if r else "" for r in rows[:4])
    if not _same_dir(shown_dir, data_dir):
        raise ProtectRefused(
            f"the server on port {port} runs {shown_dir}, not {data_dir}; nothing was changed"
        )
    ours = f"--spool {entry.spool_dir} " in archive_command
    if archive_command not in ("", "(disabled)") and not ours:
        raise ProtectRefused(
            f"{uid} already archives with archive_command = {archive_command!r} (another "
            "tool's?); Tidemark does not replace it. Nothing was changed."
        )
    if archive_mode == "off" and not restart:
        raise ProtectRefused(
            "archive_mode is off: turning it on restarts PostgreSQL; run again with --restart. "
            "Nothing was changed."
        )
    entry = Protected(**{**entry.__dict__, "system_id": int(system_id)})
    console.print(f"[green]✓[/] inspect: {uid} is system {system_id}, archive_mode {archive_mode}")

    # -- spool and walpush, reachable by the database OS user.
    user = target.user
    # The database OS user must traverse the state directory (not list it) to reach its spool.
    os.chmod(state, os.stat(state).st_mode | 0o711)  # noqa: S103
    spool = Spool(entry.spool_dir)
    spool.init(uid, owner=user)
    tool = install_walpush(state / "tools", user=user)
    check_traversable(tool, user)
    command = spool.archive_command(system_python(user), tool)
    console.print(f"[green]✓[/] spool: {spool.path}", highlight=False)

    # -- configure archiving; declare the database to the stack before the first segment.
    protected = [e for e in read_protected(state) if e.uid != uid]
    write_protected(state, [*protected, entry])
    old = _restart_services(state, ("archiver", "executor"))
    await _sql(target, "ALTER SYSTEM SET archive_command = :'cmd';", cmd=command)
    if archive_mode == "off":
        await _sql(target, "ALTER SYSTEM SET archive_mode = 'on';")
        done = run_as(
            user,
            # -l: without it the server keeps our stdout pipe open and this call never returns.
            [*_restart_argv(target, str(data_dir))],
            cwd="/",
            timeout=timeout,
        )
        if done.returncode != 0:
            raise ProtectRefused(f"pg_ctl restart failed: {done.stdout}{done.stderr}")
    else:
        await _sql(target, "SELECT pg_reload_conf();")
    console.print("[green]✓[/] configure: archive_mode on, archive_command = walpush")
    await _wait_restarted(state, old, timeout)
    console.print(f"[green]✓[/] declare: {uid} in {state / 'protected.json'}", highlight=False)
    await _prove(state, entry, target, timeout=timeout, backup=backup)


async def _prove(
    state: Path, entry: Protected, target: Any, *, timeout: float, backup: bool
) -> None:
    """Switch the log and wait until that segment is stored and indexed; then the first base."""
    from schemas import ContractError, decode
    from schemas.messages import (
        BackupCompleted,
        BackupFailed,
        JobFailed,
        LogArchived,
        RequestBackup,
        RequestRejected,
    )
    from services.catalog.client import CatalogClient, CatalogError
    from services.planner.client import PlannerClient
    from services.planner.store import Nodes
    from services.stack.probe import connect_once

    bus = resolve_nats(None, state)
    try:
        nc = await connect_once(bus)
    except Exception as exc:
        raise ProtectRefused(unreachable(bus, exc)) from None
    try:
        nodes = await Nodes.open(nc.jetstream())
        deadline = time.monotonic() + timeout
        while await nodes.ref(entry.uid) is None:
            if time.monotonic() > deadline:
                raise ProtectRefused(f"no executor names {entry.uid} after {timeout:g}s")
            await asyncio.sleep(0.3)
        archived: asyncio.Queue[LogArchived] = asyncio.Queue()

        async def on(msg: Msg) -> None:
            try:
                event = decode(msg.data, subject=msg.subject)
            except ContractError:
                return
            if isinstance(event.data, LogArchived):
                archived.put_nowait(event.data)

        sub = await nc.subscribe(f"tm.evt.log.archived.{entry.uid}", cb=on)
        await nc.flush()
        (row,) = await _sql(
            target, "SELECT pg_walfile_name(pg_current_wal_lsn()), pg_switch_wal();"
        )
        segment = row[0]
        try:
            async with asyncio.timeout(timeout):
                while (await archived.get()).file_name != segment:
                    pass
        except TimeoutError:
            raise ProtectRefused(
                f"segment {segment} was not stored within {timeout:g}s: see the archiver's log "
                f"and {entry.spool_dir}"
            ) from None
        finally:
            await sub.unsubscribe()
        console.print(f"[green]✓[/] switch: segment {segment} stored")
        catalog = CatalogClient(nc)
        while True:
            try:
                windows = await catalog.windows(entry.uid)
                if windows.last_archived_at is not None:
                    break
            except CatalogError:
                pass
            if time.monotonic() > deadline + timeout:
                raise ProtectRefused(f"the catalog did not index {segment} in time")
            await asyncio.sleep(0.3)
        console.print(f"[green]✓[/] indexed: the catalog knows {entry.uid}'s archive")
        if not backup:
            console.print(f"  first base backup: run `tidemark backup {entry.uid}`")
            return
        from services.cli.plannercmds import follow, watching

        planner = PlannerClient(nc, timeout=60.0)
        async with watching(nc, entry.uid) as queue:
            answer = await planner.request(
                RequestBackup(reason="tidemark protect: the first base"), entry.uid
            )
            if isinstance(answer, RequestRejected):
                raise ProtectRefused(f"the planner refused the first backup: {answer.reason}")
            backup_id = answer.ref_id
            done = await follow(
                queue,
                label=f"first base backup {backup_id}",
                is_ours=lambda e: (
                    getattr(e.data, "backup_id", None) == backup_id
                    or e.correlation_id == answer.command_id
                ),
                is_end=lambda e: isinstance(e.data, BackupCompleted | BackupFailed | JobFailed),
                timeout=6 * 3600.0,
            )
        if not isinstance(done.data, BackupCompleted):
            raise ProtectRefused(f"the first base backup failed: {done.data.failure.reason}")
        console.print(
            f"[green]✓[/] backup: {done.data.backup_id}, consistent at {done.data.consistent_at}"
        )
    finally:
        await nc.close()


async def _unprotect(state: Path, uid: str, *, restart: bool) -> None:
    from services.engines.postgres.oscmd import run_as
    from services.engines.postgres.spool import Spool

    entries = read_protected(state)
    entry = next((e for e in entries if e.uid == uid), None)
    if entry is None:
        raise ProtectRefused(f"{uid} is not protected by the stack at {state}")
    target = _hosted_target(entry)
    # Stop new segments first, then let the archiver drain what the spool holds.
    await _sql(target, "ALTER SYSTEM RESET archive_command;")
    await _sql(target, "ALTER SYSTEM RESET archive_mode;")
    if restart:
        done = run_as(
            target.user,
            [*_restart_argv(target, entry.data_dir)],
            cwd="/",
        )
        if done.returncode != 0:
            raise ProtectRefused(f"pg_ctl restart failed: {done.stdout}{done.stderr}")
    else:
        await _sql(target, "SELECT pg_reload_conf();")
    spool = Spool(entry.spool_dir)
    deadline = time.monotonic() + 60
    while any(spool.ready_dir.iterdir()) if spool.ready_dir.is_dir() else False:
        if time.monotonic() > deadline:
            raise ProtectRefused(
                f"{spool.ready_dir} still holds segments not yet stored; the declaration is "
                "kept so that the archiver finishes them. Run unprotect again later."
            )
        await asyncio.sleep(0.5)
    write_protected(state, [e for e in entries if e.uid != uid])
    old = _restart_services(state, ("archiver", "executor"))
    await _wait_restarted(state, old, 60)
    console.print(
        f"[green]✓ {uid} is no longer archived[/]; its archive and catalog entries are kept"
        + ("" if restart else " (archive_mode off takes effect at the next restart)"),
        highlight=False,
    )
