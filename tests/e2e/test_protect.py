"""`tidemark protect` on a fresh PostgreSQL cluster (archive_mode off, as initdb leaves it), with
a stack started by `tidemark up`: one command to archiving proven and a first base backup; the
in-place restore guard on the real database; `unprotect` leaving the archive as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.demo.cluster import LocalCluster
from services.stack.natsserver import free_port

pytestmark = pytest.mark.e2e
TIDEMARK = [sys.executable, "-m", "services.cli.main"]
UID = "prot-db"


def _tidemark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIDEMARK, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tm-e2e-protect-", dir="/var/tmp"))
    os.chmod(path, 0o711)  # noqa: S103 (the database OS user traverses it)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cluster(root: Path) -> Iterator[LocalCluster]:
    pg = LocalCluster(root / "pg")
    pg.create({})
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def stack(root: Path) -> Iterator[Path]:
    state = root / "state"
    up = subprocess.Popen(
        [*TIDEMARK, "up", "--state-dir", str(state), "--nats-port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            shown = _tidemark("status", "-o", "json", "--state-dir", str(state), timeout=30)
            if shown.returncode == 0:
                states = {
                    h["service"]: h["state"] for h in json.loads(shown.stdout)["health"].values()
                }
                if len(states) == 4 and set(states.values()) == {"healthy"}:
                    break
            time.sleep(0.5)
        else:
            raise AssertionError("the stack did not come up healthy")
        yield state
    finally:
        up.terminate()
        up.wait(60)


def test_protect_takes_a_fresh_cluster_to_archiving_proven_and_a_first_backup(
    cluster: LocalCluster, stack: Path
) -> None:
    cluster.psql("CREATE TABLE kept (n int); INSERT INTO kept SELECT generate_series(1, 100)")
    argv = [
        "protect",
        UID,
        "--data-dir",
        str(cluster.data_dir),
        "--port",
        str(cluster.port),
        "--socket-dir",
        str(cluster.base),
        "--os-user",
        cluster.user.name,
        "--state-dir",
        str(stack),
    ]
    refused = _tidemark(*argv)  # archive_mode is off: turning it on needs a restart
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "--restart" in refused.stdout
    assert cluster.psql("SHOW archive_mode") == "off"

    started = time.monotonic()
    done = _tidemark(*argv, "--restart")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"tidemark protect on a fresh cluster took {took:.1f}s")
    said = " ".join(done.stdout.split())
    for step in ("inspect:", "spool:", "configure:", "declare:", "switch: segment", "indexed:"):
        assert step in said, said
    assert f"{UID} is protected" in said

    windows = _tidemark("windows", UID, "-o", "json", "--state-dir", str(stack))
    assert windows.returncode == 0, windows.stdout + windows.stderr
    reply = json.loads(windows.stdout)
    assert len(reply["backups"]) == 1
    assert reply["last_archived_at"] is not None

    info = _tidemark("info", UID, "-o", "json", "--state-dir", str(stack))
    assert info.returncode == 0, info.stdout + info.stderr
    (page,) = json.loads(info.stdout)["databases"]
    assert page["database"]["uid"] == UID
    assert [b["backup_id"] for b in page["backups"]] == [b["backup_id"] for b in reply["backups"]]
    assert page["archiving"]["last_archived_at"] is not None
    text = _tidemark("info", "--state-dir", str(stack))
    assert f"backup {reply['backups'][0]['backup_id']}" in " ".join(text.stdout.split())

    listed = _tidemark("backups", "list", UID, "-o", "json", "--state-dir", str(stack))
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert json.loads(listed.stdout)["backups"] == reply["backups"]

    # The guard on the real database: no --in-place --yes, no terminal: refused, nothing lost.
    restore = _tidemark("restore", UID, "--immediate", "--state-dir", str(stack))
    assert restore.returncode == 1, restore.stdout + restore.stderr
    assert "refused" in restore.stdout
    assert cluster.psql("SELECT count(*) FROM kept") == "100"

    gone = _tidemark("unprotect", UID, "--state-dir", str(stack))
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert cluster.psql("SHOW archive_command") in ("", "(disabled)")
    assert json.loads((stack / "protected.json").read_text()) == {"databases": []}
    after = _tidemark("windows", UID, "-o", "json", "--state-dir", str(stack))
    assert len(json.loads(after.stdout)["backups"]) == 1, "unprotect must not touch the archive"
