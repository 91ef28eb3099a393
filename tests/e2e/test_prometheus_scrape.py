"""A real Prometheus (Debian's `prometheus` package; `.ci/run` installs it) scrapes the embedded
stack's services on their health ports, and every query of the Grafana dashboard is evaluated
against what it scraped: each is a valid query, and each returns series once the stack has done
what the panel shows (a base backup, archived WAL, a verification, a failed job, a dead letter).

Two panels stay empty by design here, and the test says so rather than faking the trouble they
chart: archive retries and archive alarms count store failures, which this stack never has
(`tests/unit/test_archiver_streamer.py` produces them against a failing store).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from schemas import envelope
from schemas.messages import BackupSpec, BackupVerified, JobFailed, RunBackup, RunVerify
from services.bus import Publisher
from services.demo.cluster import free_port
from tests.e2e.pitr_stack import NODE, PitrStack, protect

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus is not installed (apt-get install prometheus; .ci/run does)",
    ),
]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tidemark-dashboard.json"
SERVICES = ("planner", "executor", "archiver", "catalog")
NO_TROUBLE_HERE = ("tidemark_archive_retries_total", "tidemark_archive_alarms_total")


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tm-e2e-prom-", dir="/var/tmp"))
    os.chmod(path, 0o711)  # noqa: S103 (the database OS user traverses it)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(scope="module")
async def stack(root: Path) -> AsyncIterator[tuple[PitrStack, dict[str, int]]]:
    ports = {name: free_port() for name in SERVICES}
    db = protect(root, "prom-src")
    try:
        started = await PitrStack.start(root, [db], health_ports=ports)
    except BaseException:
        db.cluster.stop()
        raise
    try:
        yield started, ports
    finally:
        await started.close()


@contextlib.contextmanager
def prometheus(root: Path, ports: dict[str, int]) -> Iterator[str]:
    assert PROMETHEUS is not None
    home = root / "prometheus"
    home.mkdir()
    targets = [f"127.0.0.1:{port}" for port in ports.values()]
    config = home / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: tidemark\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n",
        encoding="utf-8",
    )
    port = free_port()
    with open(home / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def query(url: str, expr: str) -> dict[str, Any]:
    expr = expr.replace('=~"$database"', '=~".*"')
    full = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(full, timeout=10) as answer:  # noqa: S310 (loopback)
            body: dict[str, Any] = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


async def test_every_dashboard_query_returns_series_from_a_real_prometheus_scrape(
    stack: tuple[PitrStack, dict[str, int]], root: Path
) -> None:
    pitr, ports = stack
    db = pitr.dbs[0]
    backup = await pitr.backup(db)
    for _ in range(3):
        db.cluster.psql("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1)")
        db.switch_wal()
    await pitr.wait_covered(db, db.switch_wal())
    mark = pitr.recorder.mark()
    # A verification of the base, a job the executor must refuse, and a malformed command.
    publisher = Publisher(pitr.nc.jetstream(), source="e2e@local")
    verify = RunVerify(
        job_id=uuid.uuid4(), backup_id=backup.backup_id, manifest_key=backup.manifest_key
    )
    await publisher.publish(envelope(verify, source="e2e@local", database=db.ref), node=NODE)
    stray = db.ref.model_copy(update={"uid": "nobody-hosts-this"})
    refused = RunBackup(job_id=uuid.uuid4(), backup_id="stray", spec=BackupSpec())
    await publisher.publish(envelope(refused, source="e2e@local", database=stray), node=NODE)
    await pitr.nc.jetstream().publish(
        "tm.cmd.planner.any.backup.request", b'{"not": "an envelope"}'
    )
    verdict = await pitr.recorder.wait_for(
        lambda e: isinstance(e.data, BackupVerified), since=mark, timeout=120, what="verified"
    )
    assert verdict.data.ok, verdict.data.checks
    await pitr.recorder.wait_for(
        lambda e: isinstance(e.data, JobFailed), since=mark, timeout=60, what="a refused job"
    )
    with prometheus(root, ports) as url:
        empty: list[str] = []
        deadline = time.monotonic() + 60
        while True:
            await asyncio.sleep(2)
            results = {
                expr: await asyncio.to_thread(query, url, expr) for _, expr in dashboard_queries()
            }
            bad = {e: r for e, r in results.items() if r.get("status") != "success"}
            assert not bad, f"queries Prometheus refused: {bad}"
            empty = [e for e, r in results.items() if not r["data"]["result"]]
            expected_empty = [e for e in empty if any(n in e for n in NO_TROUBLE_HERE)]
            if empty == expected_empty or time.monotonic() > deadline:
                break
    assert empty == expected_empty, f"dashboard queries with no series: {empty}"
    assert len(expected_empty) == 2
