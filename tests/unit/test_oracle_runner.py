"""The tool runner, against small stand-in executables in a temporary ORACLE_HOME: the
environment it builds, where scripts and secrets go, exit statuses, timeouts and cancellation.

These start processes (they are not `unit`); the simulated Oracle toolchain is exercised in
`tests/integration/test_oracle_sim.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from services.engines.base import EngineError
from services.engines.oracle.errors import Verdict
from services.engines.oracle.runner import Connect, OracleHome, Tool, run_tool

pytestmark = [pytest.mark.oracle]

_PROBE = """\
#!{python}
import json, os, stat, sys, time
arg = [a for a in sys.argv[1:] if "=" in a or a.startswith("@")][-1]
path = arg.split("=", 1)[-1].lstrip("@")
st = os.stat(path)
print(json.dumps({{
    "argv": sys.argv[1:],
    "env": {{k: os.environ.get(k) for k in ("ORACLE_HOME", "ORACLE_SID", "NLS_DATE_FORMAT",
                                           "TNS_ADMIN", "SECRET_FROM_PARENT")}},
    "mode": oct(stat.S_IMODE(st.st_mode)),
    "dir_mode": oct(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)),
    "path": path,
    "script": open(path).read(),
}}), flush=True)
for line in os.environ.get("PROBE_LINES", "").split("|"):
    if line:
        print(line, flush=True)
if os.environ.get("PROBE_SLEEP"):
    open(os.environ["PROBE_PIDFILE"], "w").write(str(os.getpid()))
    time.sleep(float(os.environ["PROBE_SLEEP"]))
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
"""


def _home(tmp_path: Path, **env: str) -> OracleHome:
    bin_dir = tmp_path / "home" / "bin"
    bin_dir.mkdir(parents=True)
    # The runner builds the environment from scratch; the probe's behaviour is baked in.
    prelude = "".join(f"import os; os.environ[{k!r}] = {v!r}\n" for k, v in env.items())
    for tool in Tool:
        text = _PROBE.format(python=sys.executable)
        first, rest = text.split("\n", 1)
        (bin_dir / tool.value).write_text(f"{first}\n{prelude}{rest}")
        (bin_dir / tool.value).chmod(0o755)
    return OracleHome(oracle_home=tmp_path / "home", sid="TMSIM", work_dir=tmp_path)


async def _probe(home: OracleHome, tool: Tool, script: str, **kw: object) -> tuple[dict, object]:
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    result = await run_tool(home, tool, script, on_line=on_line, **kw)  # type: ignore[arg-type]
    return json.loads(lines[0]), result


async def test_environment_is_built_and_the_script_is_private(tmp_path: Path) -> None:
    os.environ["SECRET_FROM_PARENT"] = "leak"
    try:
        seen, result = await _probe(_home(tmp_path), Tool.RMAN, "RESTORE DATABASE PREVIEW;\n")
    finally:
        del os.environ["SECRET_FROM_PARENT"]
    assert seen["env"] == {
        "ORACLE_HOME": str(tmp_path / "home"),
        "ORACLE_SID": "TMSIM",
        "NLS_DATE_FORMAT": "YYYY-MM-DD HH24:MI:SS",
        "TNS_ADMIN": None,
        "SECRET_FROM_PARENT": None,
    }
    assert seen["argv"][:3] == ["target", "/", "nocatalog"]
    assert (seen["mode"], seen["dir_mode"]) == ("0o600", "0o700")
    assert seen["script"] == "RESTORE DATABASE PREVIEW;\n"
    assert not Path(seen["path"]).exists(), "the script directory is removed after the run"
    assert result.ok  # type: ignore[attr-defined]


async def test_password_goes_only_to_the_parameter_file_and_is_scrubbed(tmp_path: Path) -> None:
    home = _home(tmp_path, PROBE_LINES="login as system/s3cr3t-pw failed")
    connect = Connect(user="system", alias="SRC", password="s3cr3t-pw")
    seen_lines: list[str] = []

    async def on_line(line: str) -> None:
        seen_lines.append(line)

    result = await run_tool(home, Tool.EXPDP, "SCHEMAS=APP", connect=connect, on_line=on_line)
    assert result.ok
    assert all("s3cr3t-pw" not in a for a in json.loads(seen_lines[0])["argv"])
    assert "login as system/******** failed" in seen_lines
    assert not any("s3cr3t-pw" in line for line in seen_lines[1:])
    assert "s3cr3t-pw" not in repr(connect)


async def test_wallet_alias_is_the_only_credential_on_argv(tmp_path: Path) -> None:
    seen, _ = await _probe(
        _home(tmp_path), Tool.DGMGRL, "SHOW CONFIGURATION;\n", connect=Connect.wallet("PRIM")
    )
    assert seen["argv"][:2] == ["-silent", "/@PRIM"]


@pytest.mark.parametrize(
    ("tool", "exit_code", "lines", "ok", "verdict"),
    [
        (Tool.RMAN, 0, "", True, None),
        (
            Tool.RMAN,
            1,
            "RMAN-03009: failure on ch1|ORA-19511: media manager",
            False,
            Verdict.RETRYABLE,
        ),
        (Tool.RMAN, 1, "", False, Verdict.FATAL),
        # Exit 5 is judged by a workflow's allow-list (datapump.py), never benign by itself.
        (Tool.EXPDP, 5, "ORA-39082: compiled with warnings", False, Verdict.FATAL),
        (Tool.IMPDP, 5, "ORA-39083: object type failed", False, Verdict.FATAL),
        (
            Tool.IMPDP,
            1,
            "UDE-00008: operation generated ORACLE error|ORA-01017: invalid",
            False,
            Verdict.FATAL,
        ),
    ],
)
async def test_exit_codes(
    tmp_path: Path, tool: Tool, exit_code: int, lines: str, ok: bool, verdict: Verdict | None
) -> None:
    home = _home(tmp_path, PROBE_EXIT=str(exit_code), PROBE_LINES=lines)
    result = await run_tool(home, tool, "X")
    assert result.ok is ok
    assert (result.classification.verdict if result.classification else None) is verdict
    if not ok:
        with pytest.raises(EngineError) as err:
            result.raise_for_failure("the step")
        assert err.value.failure.retryable is (verdict is Verdict.RETRYABLE)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    home = _home(tmp_path, PROBE_SLEEP="60", PROBE_PIDFILE=str(pidfile))
    with pytest.raises(EngineError) as err:
        await run_tool(home, Tool.RMAN, "X", timeout=1.0)
    assert err.value.failure.retryable
    assert _gone(int(pidfile.read_text()))


async def test_cancel_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    home = _home(tmp_path, PROBE_SLEEP="60", PROBE_PIDFILE=str(pidfile))
    task = asyncio.create_task(run_tool(home, Tool.RMAN, "X"))
    while not pidfile.exists() or not pidfile.read_text():
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(int(pidfile.read_text()))


async def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    home = OracleHome(oracle_home=tmp_path / "nowhere", sid="X")
    with pytest.raises(EngineError, match="does not exist"):
        await run_tool(home, Tool.RMAN, "X")
