"""The embedded stack: `tidemark up` comes up healthy and shuts down cleanly; each service also
runs alone against any NATS URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services.cli.stackcmds import resolve_nats
from services.stack.natsserver import NatsServer, free_port
from services.stack.probe import read_health
from tests.integration.bus_helpers import wait_for

pytestmark = pytest.mark.integration
TIDEMARK = [sys.executable, "-m", "services.cli.main"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_up_until_healthy_comes_up_and_down_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *TIDEMARK,
            "up",
            "--until-healthy",
            "--state-dir",
            str(tmp_path),
            "--nats-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all services healthy" in result.stdout
    assert "stopped cleanly" in result.stdout
    for name in ("planner", "executor", "archiver", "catalog"):
        assert name in result.stdout
    assert not (tmp_path / "stack.json").exists()


async def test_up_runs_until_ctrl_c_and_status_shows_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*TIDEMARK, "up", "--state-dir", str(tmp_path), "--nats-port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        await wait_for((tmp_path / "stack.json").exists, timeout=30)
        bus = resolve_nats(None, tmp_path)  # as the CLI does: the tool user named in stack.json
        assert bus.user == "tidemark-tool"
        healthy: dict[str, object] = {}

        async def all_healthy() -> bool:
            healthy.update(await read_health(bus))
            states = {h["service"]: h["state"] for h in healthy.values()}
            return states == dict.fromkeys(
                ("planner", "executor", "archiver", "catalog"), "healthy"
            )

        deadline = time.monotonic() + 60
        while not await all_healthy():
            assert time.monotonic() < deadline, healthy
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)

        status = subprocess.run(
            [*TIDEMARK, "status", "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        for name in ("planner", "executor", "archiver", "catalog", "TM_CMD", "TM_EVT", "TM_DLQ"):
            assert name in status.stdout
        assert status.stdout.count("healthy") == 4
        assert "Dead letters: 0" in status.stdout

        stack = json.loads((tmp_path / "stack.json").read_text())
        # The catalog serves its page and answers queries from the same index.
        with urllib.request.urlopen(stack["timeline_url"] + "api/databases", timeout=10) as r:  # noqa: S310
            assert json.loads(r.read()) == {"databases": []}
        unknown = subprocess.run(
            [*TIDEMARK, "windows", "nosuch", "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert unknown.returncode == 2, unknown.stdout + unknown.stderr
        assert "no database 'nosuch'" in unknown.stdout
        pids = list(stack["services"].values())
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped cleanly" in out
        assert not any(_pid_alive(pid) for pid in pids)
        assert not (tmp_path / "stack.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_without_a_stack_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [*TIDEMARK, "status", "--nats-url", f"nats://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach NATS" in result.stdout


@pytest.mark.parametrize("service", ["planner", "executor", "archiver", "catalog"])
async def test_service_runs_alone_against_any_nats(
    service: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    node = f"alone-{service}"
    env = {
        **os.environ,
        "TIDEMARK_STATE_DIR": str(tmp_path),
        "TIDEMARK_CATALOG__HTTP_PORT": str(free_port()),
    }
    log = tmp_path / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                f"services.{service}",
                "--nats-url",
                nats_server.url,
                "--node",
                node,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        key = f"{service}.{node}"

        async def reported() -> dict[str, object]:
            return (await read_health(nats_server.url)).get(key, {})

        deadline = time.monotonic() + 30
        while (await reported()).get("state") != "healthy":
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert (await reported()).get("state") == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_services_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*TIDEMARK, "up", "--state-dir", str(tmp_path), "--nats-port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 60
        while len(stack.get("services", {}) or {}) < 4:  # type: ignore[arg-type]
            assert time.monotonic() < deadline
            time.sleep(0.2)
            if (tmp_path / "stack.json").exists():
                stack = json.loads((tmp_path / "stack.json").read_text())
        bus = resolve_nats(None, tmp_path)
        while len(await read_health(bus)) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.kill()  # SIGKILL: no chance to stop its children
        proc.wait()
        pids = list(stack["services"].values())  # type: ignore[union-attr]
        deadline = time.monotonic() + 20
        while any(_pid_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "services outlived their supervisor"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        nats_pid = stack.get("nats_pid")
        if isinstance(nats_pid, int) and _pid_alive(nats_pid):
            os.kill(nats_pid, signal.SIGKILL)
