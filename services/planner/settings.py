"""The `planner` settings section: how often it looks at the clock, how far back it catches up,
how often it applies retention.

    [planner]
    tick_s = 1.0                    # the scheduler looks at the clock this often
    policy_resync_s = 30            # the scheduler's watch of the policies is re-listed this often
    catchup_grace_s = 3600          # after a restart, a slot missed by less than this still runs
    retention_interval_s = 3600     # retention is applied this often (one replica does it)
    request_timeout_s = 30          # how long PlannerClient waits for accepted/rejected
    migration_lag_interval_s = 5    # a catching-up migration's lag is measured this often
    migration_ready_interval_s = 30 # and a ready one's, while it waits for its cutover
    store_url = "gs://archive/tidemark"   # default: the archiver's store

This module imports nothing from `services/` (the settings model imports it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PlannerSettings(BaseModel):
    """How the planner schedules. Defaults suit production and the embedded stack alike."""

    model_config = ConfigDict(extra="forbid")

    tick_s: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="scheduler poll interval; well under a minute so no slot is skipped",
    )
    policy_resync_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="the scheduler re-lists the policies this often, repairing what its watch "
        "missed; keep it well under catchup_grace_s",
    )
    catchup_grace_s: float = Field(
        default=3600.0,
        ge=0,
        le=7 * 86400,
        description="on start, the latest slot missed by less than this is still emitted",
    )
    retention_interval_s: float = Field(
        default=3600.0, gt=0, description="how often each policy's recovery window is enforced"
    )
    retention_enabled: bool = Field(
        default=True, description="off: previews are logged, nothing is deleted"
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="PlannerClient's wait for request.accepted/rejected"
    )
    store_url: str | None = Field(
        default=None, description="blob store retention deletes from; default: the archiver's"
    )
    migration_lag_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="a catching-up migration measures its lag this often (each is one job)",
    )
    migration_ready_interval_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a ready migration waiting for its cutover measures its lag this often",
    )
