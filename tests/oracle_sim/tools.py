"""The simulated Oracle toolchain's executables, and how a test installs them. Not Oracle.

`install(oracle_home, sim_dir)` writes `rman`, `expdp`, `impdp` and `dgmgrl` into
`<oracle_home>/bin`: each a few lines of Python run by this interpreter that call `main` here
with the tool's name. They find the simulated database through TIDEMARK_ORACLE_SIM_DIR, which
the installed script defaults to `sim_dir` (the engine's runner builds a clean environment and
does not pass the variable through).

Data Pump and dgmgrl are modelled only as far as the runner's contract needs: a parameter file
of known keys, the terminal "Job ... successfully completed / completed with N error(s)" line,
exit statuses 0/5/1, and failure injection. `rman` is the real model (`rman.py`).
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

from tests.oracle_sim.db import ENV_DIR, SimulatedOracle

TOOLS = ("rman", "expdp", "impdp", "dgmgrl")
_REPO = Path(__file__).resolve().parents[2]

_LAUNCHER = """\
#!{python}
# Simulated Oracle {tool} (Tidemark test toolchain). Not Oracle.
import os
import sys

sys.path.insert(0, {repo!r})
os.environ.setdefault({env!r}, {sim_dir!r})
from tests.oracle_sim.tools import main

sys.exit(main({tool!r}, sys.argv[1:]))
"""


def install(oracle_home: Path, sim_dir: Path) -> Path:
    """Install the simulated executables into `<oracle_home>/bin`; returns that directory."""
    bin_dir = oracle_home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (oracle_home / "lib").mkdir(exist_ok=True)
    for tool in TOOLS:
        path = bin_dir / tool
        path.write_text(
            _LAUNCHER.format(
                python=sys.executable, tool=tool, repo=str(_REPO), env=ENV_DIR, sim_dir=str(sim_dir)
            )
        )
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP)
    return bin_dir


def main(tool: str, argv: list[str]) -> int:
    if tool == "rman":
        from tests.oracle_sim import rman

        return rman.main(argv)
    if tool in ("expdp", "impdp"):
        return _datapump(tool, argv)
    if tool == "dgmgrl":
        return _dgmgrl(argv)
    print(f"simulated Oracle toolchain has no tool {tool!r}", file=sys.stderr)
    return 2


_DP_KEYS = {
    "USERID",
    "SCHEMAS",
    "DIRECTORY",
    "DUMPFILE",
    "LOGFILE",
    "FLASHBACK_SCN",
    "PARALLEL",
    "TABLE_EXISTS_ACTION",
    "METRICS",
    "LOGTIME",
}


def _datapump(tool: str, argv: list[str]) -> int:
    db = SimulatedOracle.from_env()
    name = "SYS_EXPORT_SCHEMA_01" if tool == "expdp" else "SYS_IMPORT_SCHEMA_01"
    print(f"{tool.capitalize()}: Release 19.0.0.0.0 - SIMULATED (Tidemark test toolchain)")
    if len(argv) != 1 or not argv[0].startswith("parfile="):
        print("UDE-00014: invalid value for parameter, 'parfile' (simulator takes only parfile=)")
        return 1
    params: dict[str, str] = {}
    for line in Path(argv[0].removeprefix("parfile=")).read_text().splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition("=")
        if key.strip().upper() not in _DP_KEYS:
            print(f"UDE-00010: multiple job modes requested or unknown parameter {key.strip()!r}")
            return 1
        params[key.strip().upper()] = value.strip()
    injection = db.take_injection(tool)
    if injection is not None:
        for line in injection.lines:
            print(line, flush=True)
        if injection.exit_code == 5:
            errors = sum(1 for line in injection.lines if re.match(r"ORA-\d{5}", line))
            print(f'Job "SYSTEM"."{name}" completed with {errors} error(s) at 12:00:00')
        elif injection.exit_code:
            print(f'Job "SYSTEM"."{name}" stopped due to fatal error at 12:00:00')
        return injection.exit_code
    dump = db.root / "dpdump" / params.get("DUMPFILE", "expdat.dmp")
    if tool == "expdp":
        dump.parent.mkdir(exist_ok=True)
        dump.write_text(json.dumps({"simulated": True, "rows": db.table_contents()}))
        print(f'. . exported "TM_SIM"."ORDERS" {len(db.table_contents())} rows')
    elif not dump.exists():
        print(
            f"ORA-39001: invalid argument value\nORA-39000: bad dump file specification\n"
            f'ORA-31640: unable to open dump file "{dump}" for read'
        )
        return 1
    print(f'Job "SYSTEM"."{name}" successfully completed at 12:00:00')
    return 0


def _dgmgrl(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "-silent" or not argv[2].startswith("@"):
        print("simulated dgmgrl: expected -silent <connect> @<script>", file=sys.stderr)
        return 2
    db = SimulatedOracle.from_env()
    injection = db.take_injection("dgmgrl")
    if injection is not None:
        for line in injection.lines:
            print(line)
        return injection.exit_code
    for line in Path(argv[2][1:]).read_text().splitlines():
        if line.strip().upper() != "SHOW CONFIGURATION;":
            print(f'Syntax error before or at "{line.strip()}" (simulated dgmgrl)')
            return 1
        print("Configuration - tmsim_dg\n  Protection Mode: MaxPerformance")
        print("Fast-Start Failover:  Disabled\n\nConfiguration Status:\nSUCCESS")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(os.path.basename(sys.argv[0]), sys.argv[1:]))
