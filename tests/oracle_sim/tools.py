"""The simulated Oracle toolchain's executables, and how a test installs them. Not Oracle.

`install(oracle_home, sim_dir)` writes `rman`, `expdp`, `impdp` and `dgmgrl` into
`<oracle_home>/bin`: each a few lines of Python run by this interpreter that call `main` here
with the tool's name. They find the simulated database through TIDEMARK_ORACLE_SIM_DIR, which
the installed script defaults to `sim_dir` (the engine's runner builds a clean environment and
does not pass the variable through).

For a database that is a member of a simulated Data Guard configuration (`dataguard.py`: its
root's parent holds one), `rman` and `dgmgrl` are that module's; otherwise dgmgrl is modelled
only as far as the runner's contract needs. `rman` is the real model
(`rman.py`), and so are `expdp`/`impdp` (`datapump.py`, over the dictionary of `dictionary.py`).
"""

from __future__ import annotations

import os
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
    if tool in ("rman", "dgmgrl"):
        from tests.oracle_sim import dataguard

        found = dataguard.find_configuration(SimulatedOracle.from_env().root)
        if found is not None:  # a member of a Data Guard configuration
            run = dataguard.rman_main if tool == "rman" else dataguard.dgmgrl_main
            return run(*found, argv)
    if tool == "rman":
        from tests.oracle_sim import rman

        return rman.main(argv)
    if tool in ("expdp", "impdp"):
        from tests.oracle_sim import datapump

        return datapump.main(tool, argv)
    if tool == "dgmgrl":
        return _dgmgrl(argv)
    print(f"simulated Oracle toolchain has no tool {tool!r}", file=sys.stderr)
    return 2


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
