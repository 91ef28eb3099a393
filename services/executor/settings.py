"""The `executor` settings section: how the executor runs jobs on this node.

    [executor]
    concurrency = 2                 # jobs at once on this node (one per database, always)
    job_timeout_s = 21600
    queue_limit = 16                # commands held at once, running or waiting their turn

The databases it runs jobs for are declared once, in the top-level `[[databases]]`
(`services/settings/databases.py`); `executor.databases` is this node's share of them, derived
when the settings load. What the engines read of a database (`PostgresInstance`,
`OracleInstance`, ...) is the engines' own (`services/engines/settings.py`), re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.engines.settings import (
    EngineSettings,
    HostedDatabase,
    OracleInstance,
    OracleSnapshots,
    PostgresInstance,
)

__all__ = [
    "ExecutorSettings",
    "HostedDatabase",
    "OracleInstance",
    "OracleSnapshots",
    "PostgresInstance",
]


class ExecutorSettings(EngineSettings):
    """How the executor runs jobs. Defaults suit the embedded stack."""

    concurrency: int = Field(default=2, ge=1, le=64, description="jobs at once on this node")
    job_timeout_s: float = Field(default=6 * 3600.0, gt=0, description="a job's longest run")
    heartbeat_s: float = Field(default=5.0, gt=0, description="node heartbeat in tm_nodes")
    journal_path: Path | None = Field(
        default=None, description="default <state_dir>/executor/jobs.sqlite"
    )
    scratch_dir: Path | None = Field(
        default=None, description="verification restores; default <state_dir>/executor/scratch"
    )
    queue_limit: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="commands taken at once (running and waiting for their database or a slot)",
    )
    progress_interval_s: float = Field(
        default=0.5, gt=0, description="job.progress at most this often per job (phases always)"
    )
    cancel_grace_s: float = Field(
        default=30.0, gt=0, description="how long a cancelled engine may take to clean up"
    )
    journal_keep_days: float = Field(
        default=30.0, gt=0, description="how long finished jobs stay in the journal"
    )

    def journal_for(self, state_dir: Path) -> Path:
        return self.journal_path or state_dir / "executor" / "jobs.sqlite"

    def scratch_for(self, state_dir: Path) -> Path:
        return self.scratch_dir or state_dir / "executor" / "scratch"
