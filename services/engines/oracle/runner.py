"""Running Oracle's command-line tools (rman, expdp, impdp, dgmgrl) safely.

What every run gets, and the hazard each rule removes:

- The tool is `$ORACLE_HOME/bin/<tool>`, never a PATH lookup, so a node with two homes runs the
  one its database belongs to. The environment is built, not inherited: ORACLE_HOME, ORACLE_SID,
  NLS_DATE_FORMAT (RMAN prints and parses dates with it; a NLS default from the node would change
  what `SET UNTIL TIME` means), NLS_LANG, TNS_ADMIN for wallets.
- The script goes to a 0600 file inside a fresh 0700 directory and is removed afterwards: a
  script may name a wallet alias or carry a Data Pump USERID, and argv is world-readable.
- Credentials are OS authentication (`/`) or a wallet alias (`/@alias`); a password, when one is
  unavoidable (Data Pump over a link), goes only in the 0600 parameter file, and every output
  line has it scrubbed before anything sees the line.
- Output is read line by line as it comes, handed to `on_line` (the backup uploads a piece the
  moment RMAN names it), and the coded lines are kept for classification (`errors.py`).
- The tool runs in its own process group; a timeout or a cancellation kills the whole group
  (SIGTERM, then SIGKILL), because RMAN's channels are child processes that would otherwise
  keep writing after we have given up.
- Exit codes: RMAN 0 = success, 1 = an error stack was printed. Data Pump 0 = success,
  5 = completed with errors, 1 = failure; no Data Pump code is benign everywhere, so a 5 is a
  failure here and `datapump.py` judges it by its workflow's allow-list (`errors.BENIGN_IN`).
  dgmgrl exits 0 after a failed command: an error code it prints fails the run whatever the
  exit status, and answers without a code ("Ready for Switchover: No") are read by the caller.
- `stdin`: the commands of a Data Pump client attached to a job (`START_JOB`, `CONTINUE_CLIENT`);
  standard input is closed otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.engines.base import EngineError
from services.engines.oracle.errors import Classification, Verdict, classify, codes_in

__all__ = [
    "Connect",
    "OracleHome",
    "Tool",
    "ToolResult",
    "run_tool",
]

NLS_DATE_FORMAT = "YYYY-MM-DD HH24:MI:SS"
"""The one date format our scripts and parsers agree on (see `scripts.py`)."""

_KEEP_CODED = 500
_KEEP_TAIL = 200
_KILL_GRACE_S = 5.0


class Tool(enum.Enum):
    RMAN = "rman"
    EXPDP = "expdp"
    IMPDP = "impdp"
    DGMGRL = "dgmgrl"


@dataclass(frozen=True)
class Connect:
    """How a tool logs on. `/` (OS authentication) or `/@alias` (a wallet under TNS_ADMIN) keep
    every secret out of argv; `password` is only ever written to the 0600 parameter file."""

    user: str = ""
    alias: str = ""
    password: str = field(default="", repr=False)
    auxiliary: str = ""
    """RMAN only: the wallet alias of an AUXILIARY connection (DUPLICATE FOR STANDBY)."""

    @classmethod
    def os_auth(cls) -> Connect:
        return cls()

    @classmethod
    def wallet(cls, alias: str) -> Connect:
        return cls(alias=alias)

    @property
    def argv_form(self) -> str:
        """What may appear on a command line: never a password."""
        return f"/@{self.alias}" if self.alias else "/"


@dataclass(frozen=True)
class OracleHome:
    """Which Oracle installation and instance a tool runs against."""

    oracle_home: Path
    sid: str
    nls_lang: str = "AMERICAN_AMERICA.AL32UTF8"
    tns_admin: Path | None = None
    work_dir: Path | None = None
    """Where script directories are made (default: the system temporary directory)."""
    time_zone: str | None = None
    """The database server's zone (IANA), passed as TZ: RMAN prints and reads times in its
    process's zone, and a runner that strips TZ would make it UTC on a server that is not."""
    oracle_base: Path | None = None
    """ORACLE_BASE (diagnostic destination, read-only homes); default: the node's own."""

    def binary(self, tool: Tool) -> Path:
        return self.oracle_home / "bin" / tool.value

    def environment(self) -> dict[str, str]:
        env = {
            "ORACLE_HOME": str(self.oracle_home),
            "ORACLE_SID": self.sid,
            "NLS_DATE_FORMAT": NLS_DATE_FORMAT,
            "NLS_LANG": self.nls_lang,
            "PATH": os.pathsep.join([str(self.oracle_home / "bin"), "/usr/bin", "/bin"]),
            "LD_LIBRARY_PATH": str(self.oracle_home / "lib"),
            "LANG": "C.UTF-8",
        }
        if self.tns_admin is not None:
            env["TNS_ADMIN"] = str(self.tns_admin)
        home = os.environ.get("HOME")
        if home:
            env["HOME"] = home
        tz = self.time_zone or os.environ.get("TZ")
        if tz:
            env["TZ"] = tz
        base = str(self.oracle_base) if self.oracle_base else os.environ.get("ORACLE_BASE")
        if base:
            env["ORACLE_BASE"] = base
        return env


@dataclass(frozen=True)
class ToolResult:
    """A finished run: its exit code, the coded lines and the last lines of output."""

    tool: Tool
    exit_code: int
    coded_lines: tuple[str, ...]
    tail: tuple[str, ...]
    classification: Classification | None
    """None when the run succeeded with no warnings."""

    @property
    def ok(self) -> bool:
        return self.classification is None or self.classification.verdict is Verdict.WARNING

    @property
    def warnings(self) -> list[str]:
        return [code for code, _ in codes_in(self.coded_lines) if code.startswith(("RMAN", "ORA"))]

    def raise_for_failure(self, what: str) -> None:
        """`EngineError` carrying the classified failure, unless the run succeeded."""
        if self.ok:
            return
        assert self.classification is not None
        raise EngineError(self.classification.failure(what))


OnLine = Callable[[str], Awaitable[None]]


def _argv(home: OracleHome, tool: Tool, connect: Connect, script: Path) -> list[str]:
    binary = str(home.binary(tool))
    if tool is Tool.RMAN:
        auxiliary = ["auxiliary", f"/@{connect.auxiliary}"] if connect.auxiliary else []
        return [binary, "target", connect.argv_form, *auxiliary, "nocatalog", f"cmdfile={script}"]
    if tool in (Tool.EXPDP, Tool.IMPDP):
        return [binary, f"parfile={script}"]
    return [binary, "-silent", connect.argv_form, f"@{script}"]


def _script_text(tool: Tool, script: str, connect: Connect) -> str:
    if tool in (Tool.EXPDP, Tool.IMPDP):
        # Data Pump takes its logon from the parameter file, the only place a password may go.
        if connect.password:
            userid = f"{connect.user}/{connect.password}@{connect.alias}"
        else:
            userid = connect.argv_form
        return f'USERID="{userid}"\n{script}'
    return script


def _write_private(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def _scrub(line: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            line = line.replace(secret, "********")
    return line


async def run_tool(
    home: OracleHome,
    tool: Tool,
    script: str,
    *,
    connect: Connect | None = None,
    on_line: OnLine | None = None,
    timeout: float | None = None,
    stdin: str | None = None,
) -> ToolResult:
    """Run `script` with `tool` and return the classified result (module docstring).

    A timeout raises a retryable `EngineError` after killing the process group; a cancellation
    kills the group and re-raises."""
    connect = connect or Connect.os_auth()
    secrets = [connect.password]
    binary = home.binary(tool)
    if not binary.is_file():
        raise EngineError.of(f"{binary} does not exist: is ORACLE_HOME right?", code="TM-ORA-001")
    work = Path(tempfile.mkdtemp(prefix=f"tidemark-{tool.value}-", dir=home.work_dir))
    try:
        os.chmod(work, 0o700)
        suffix = {Tool.RMAN: "rman", Tool.DGMGRL: "dgm"}.get(tool, "par")
        path = _write_private(work, f"script.{suffix}", _script_text(tool, script, connect))
        proc = await asyncio.create_subprocess_exec(
            *_argv(home, tool, connect, path),
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=home.environment(),
            cwd=work,
            start_new_session=True,
        )
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin.encode())
            await proc.stdin.drain()
            proc.stdin.close()
        coded: list[str] = []
        tail: list[str] = []
        try:
            await asyncio.wait_for(_pump(proc, secrets, on_line, coded, tail), timeout)
            exit_code = await proc.wait()
        except TimeoutError:
            await _kill_group(proc)
            raise EngineError.of(
                f"{tool.value} did not finish within {timeout:g}s; its processes were killed",
                code="TM-ORA-002",
                retryable=True,
            ) from None
        finally:
            if proc.returncode is None:
                await _kill_group(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ToolResult(
        tool=tool,
        exit_code=exit_code,
        coded_lines=tuple(coded),
        tail=tuple(tail),
        classification=_judge(tool, exit_code, coded),
    )


async def _pump(
    proc: asyncio.subprocess.Process,
    secrets: Sequence[str],
    on_line: OnLine | None,
    coded: list[str],
    tail: list[str],
) -> None:
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = _scrub(raw.decode("utf-8", errors="replace").rstrip("\r\n"), secrets)
        if codes_in([line]) and len(coded) < _KEEP_CODED:
            coded.append(line)
        tail.append(line)
        if len(tail) > _KEEP_TAIL:
            del tail[0]
        if on_line is not None:
            await on_line(line)


def _judge(tool: Tool, exit_code: int, coded: list[str]) -> Classification | None:
    found = classify(coded) if coded else None
    if (
        exit_code == 0
        and tool is Tool.DGMGRL
        and found is not None
        and found.verdict is not Verdict.WARNING
    ):
        return found
    if exit_code == 0:
        # Success; a warning code printed along the way is kept for the log.
        if found is not None and found.code is not None and found.verdict is Verdict.WARNING:
            return found
        return None
    data_pump_warned = tool in (Tool.EXPDP, Tool.IMPDP) and exit_code == 5
    if data_pump_warned and found is not None and found.verdict is Verdict.WARNING:
        # "completed with N error(s)": a success only if every deciding code is a known warning.
        return found
    if found is None or found.code is None:
        line = f"{tool.value} exited with status {exit_code} without an Oracle error code"
        return Classification(Verdict.FATAL, None, line, ())
    if found.verdict is Verdict.WARNING:
        # A failing exit with only warnings printed: the cause is missing, so do not retry.
        return Classification(Verdict.FATAL, found.code, found.line, found.codes)
    return found


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), _KILL_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
