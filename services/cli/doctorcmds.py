"""`tidemark doctor oracle`: run the conformance kit against your own Oracle database.

tidemark doctor oracle --dsn erp-db:1521/ERPPROD --user C##TIDEMARK --password-file F
tidemark doctor oracle --dsn ERPPROD_TM --wallet-dir /etc/tidemark/wallet --thick
    ... [--workflow pitr|dataguard|datapump]... [--time-zone Europe/Paris] [--archive-dest-id 1]
    ... [--oracle-home H --sid S --rman-preview --rman-validate --datapump-estimate SCHEMA]
    ... [--switchover-verify STANDBY_UNIQUE_NAME]

Reads V$ and DBA_ views only; the probes (RMAN PREVIEW / VALIDATE, Data Pump ESTIMATE_ONLY,
SWITCHOVER … VERIFY) run only when their flag asks, and none of them writes. The checks live in
`services/engines/oracle/doctor.py`; this module turns flags into its options and its report into
text or JSON. Exit status: 0 every check that a workflow relies on holds, 1 one does not (or the
database cannot be reached), 2 bad usage. A password is never an option: a file or a wallet, as
the engine's settings take it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from services.cli.output import OutputFormat, OutputOption, emit_json
from services.engines.oracle.doctor import (
    DoctorOptions,
    DoctorSource,
    Report,
    Verdict,
    Workflow,
    connect,
    examine,
    valid_name,
)
from services.engines.oracle.runner import OracleHome
from services.engines.oracle.session import OracleSessionError
from services.engines.settings import OracleConnection

__all__ = ["app", "make_app", "render_report"]

OpenSource = Callable[[OracleConnection], Awaitable[DoctorSource]]


def make_app(open_source: OpenSource) -> typer.Typer:
    """The `doctor` group, reaching databases through `open_source` (the seam tests use to hand
    in the simulated database; the real one is python-oracledb)."""
    doctor = typer.Typer(
        name="doctor",
        help="Check that a database holds what Tidemark's workflows rely on (read-only).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @doctor.command("oracle")
    def oracle(
        dsn: Annotated[str, typer.Option("--dsn", help="easy connect string, or the wallet alias")],
        user: Annotated[str | None, typer.Option(help="with --password-file")] = None,
        password_file: Annotated[
            Path | None, typer.Option("--password-file", help="a file holding the password")
        ] = None,
        wallet_dir: Annotated[
            Path | None, typer.Option("--wallet-dir", help="external password store (with --thick)")
        ] = None,
        thick: Annotated[bool, typer.Option("--thick", help="Oracle Client libraries")] = False,
        client_lib_dir: Annotated[
            Path | None, typer.Option("--client-lib-dir", help="with --thick")
        ] = None,
        time_zone: Annotated[
            str, typer.Option("--time-zone", help="the server's zone as the settings say (IANA)")
        ] = "UTC",
        archive_dest_id: Annotated[
            int, typer.Option("--archive-dest-id", min=1, max=31, help="the archiver's destination")
        ] = 1,
        workflow: Annotated[
            list[Workflow] | None,
            typer.Option("--workflow", help="only the checks of this workflow (repeatable)"),
        ] = None,
        oracle_home: Annotated[
            Path | None, typer.Option("--oracle-home", help="for the RMAN / Data Pump probes")
        ] = None,
        sid: Annotated[str | None, typer.Option("--sid", help="ORACLE_SID, with --oracle-home")] = (
            None
        ),
        rman_preview: Annotated[
            bool, typer.Option("--rman-preview", help="run RESTORE DATABASE PREVIEW (reads only)")
        ] = False,
        rman_validate: Annotated[
            bool,
            typer.Option("--rman-validate", help="run VALIDATE CHECK LOGICAL DATABASE (reads)"),
        ] = False,
        datapump_estimate: Annotated[
            str | None,
            typer.Option("--datapump-estimate", help="expdp ESTIMATE_ONLY=YES of this schema"),
        ] = None,
        datapump_directory: Annotated[
            str, typer.Option("--datapump-directory", help="the directory object dumps use")
        ] = "DATA_PUMP_DIR",
        switchover_verify: Annotated[
            str | None,
            typer.Option(
                "--switchover-verify",
                help="ALTER DATABASE SWITCHOVER TO <standby> VERIFY (changes no role)",
            ),
        ] = None,
        output: OutputOption = OutputFormat.TEXT,
    ) -> None:
        """Check an Oracle database: ARCHIVELOG, destinations, incarnation, threads, time zone,
        FORCE LOGGING, edition and options, and the Data Guard / Data Pump preflights; and what
        the simulated Oracle Tidemark is tested on assumes that this database contradicts."""
        try:
            settings = OracleConnection(
                dsn=dsn,
                user=user,
                password_file=password_file,
                wallet_dir=wallet_dir,
                thick_mode=thick,
                client_lib_dir=client_lib_dir,
                time_zone=time_zone,
            )
        except ValidationError as exc:
            _usage("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()))
        if (oracle_home is None) != (sid is None):
            _usage("--oracle-home and --sid go together")
        if switchover_verify is not None and not valid_name(switchover_verify):
            _usage("--switchover-verify takes the standby's DB_UNIQUE_NAME")
        if datapump_estimate is not None and not valid_name(datapump_estimate):
            _usage("--datapump-estimate takes a schema name")
        home = (
            OracleHome(oracle_home=oracle_home, sid=sid, time_zone=time_zone)
            if oracle_home is not None and sid is not None
            else None
        )
        options = DoctorOptions(
            time_zone=time_zone,
            archive_dest_id=archive_dest_id,
            workflows=frozenset(workflow) if workflow else frozenset(Workflow),
            home=home,
            rman_preview=rman_preview,
            rman_validate=rman_validate,
            datapump_estimate=datapump_estimate,
            datapump_directory=datapump_directory,
            switchover_target=switchover_verify,
        )
        try:
            report = asyncio.run(_examine(open_source, settings, options))
        except OracleSessionError as exc:
            typer.echo(f"✗ {exc.reason}", err=True)
            raise typer.Exit(1) from None
        if output is OutputFormat.JSON:
            emit_json(report.as_json())
        else:
            typer.echo(render_report(report))
        raise typer.Exit(report.exit_code)

    return doctor


def _usage(message: str) -> Any:
    typer.echo(f"✗ {message}", err=True)
    raise typer.Exit(2)


async def _examine(
    open_source: OpenSource, settings: OracleConnection, options: DoctorOptions
) -> Report:
    source = await open_source(settings)
    try:
        return await examine(source, options, dsn=settings.dsn)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            await close()


_MARK = {Verdict.HOLDS: "holds", Verdict.FAILS: "does not hold", Verdict.NOT_CHECKED: "not checked"}


def render_report(report: Report) -> str:
    """The report for people: a header, one line per check (and why, where there is one), the
    contradictions, a count."""
    f = report.facts
    head = f"Oracle at {report.dsn}"
    if "dbid" in f:
        head += f": {f.get('name', '?')} DBID {f['dbid']}"
    described = [f[k] for k in ("version", "edition", "platform") if k in f]
    if described:
        head += f", {' '.join(described)}"
    lines = [head, ""]
    width = max((len(c.title) for c in report.checks), default=10)
    for check in report.checks:
        mark = _MARK[check.verdict] + (" (advice)" if check.advisory else "")
        lines.append(f"  {mark:<24} {check.title:<{width}}  {check.observed}")
        if check.verdict is not Verdict.HOLDS or check.why:
            if check.verdict is Verdict.FAILS:
                lines.append(f"  {'':<24} {'':<{width}}  needs: {check.expected}")
            if check.why:
                lines.append(f"  {'':<24} {'':<{width}}  {check.why}")
    lines.append("")
    if report.contradictions:
        lines.append("What the simulator assumes that this database contradicts:")
        for c in report.contradictions:
            lines.append(f"  - assumed {c.assumption}; here: {c.observed}. {c.consequence}")
    else:
        lines.append("Nothing here contradicts what the simulator assumes.")
    counts = {v: sum(1 for c in report.checks if c.verdict is v) for v in Verdict}
    lines.append(
        f"{counts[Verdict.HOLDS]} hold, {counts[Verdict.FAILS]} do not hold, "
        f"{counts[Verdict.NOT_CHECKED]} not checked"
        + ("" if report.holds else f"; failing: {', '.join(c.name for c in report.failed)}")
    )
    return "\n".join(lines)


app = make_app(connect)
