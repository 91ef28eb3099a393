"""PostgreSQL migration steps: the engine half of the `physical-stream` method.

    preflight.py   facts of a cluster (version, size, WAL and replication settings, checksums,
                   encoding, extensions); changes nothing
    standby.py     build the target as a streaming standby (pg_basebackup -R, a physical slot)
                   and read the lag from both sides
    cutover.py     fence the source, wait for the final position, promote, verify, unfence
    rollback.py    make the old source follow the new primary (pg_rewind where needed)

Each step is a function of the instances it touches (`PgInstance`: where a cluster lives and
which OS user runs it) and knows no service: the executor passes what it hosts. Steps are
idempotent, so a step interrupted by a restart is rerun from its start. Everything runs as the
cluster's OS user over the local socket (peer/trust), as the rest of the PostgreSQL engine does.
"""

from services.engines.postgres.migration.cutover import (
    Fence,
    fence_source,
    promote_target,
    unfence_source,
    verify_positions,
    wait_replayed,
)
from services.engines.postgres.migration.instance import MigrationStepError, PgInstance
from services.engines.postgres.migration.preflight import PgFacts, gather_facts
from services.engines.postgres.migration.rollback import follow_new_primary
from services.engines.postgres.migration.standby import Lag, build_standby, measure_lag

__all__ = [
    "Fence",
    "Lag",
    "MigrationStepError",
    "PgFacts",
    "PgInstance",
    "build_standby",
    "fence_source",
    "follow_new_primary",
    "gather_facts",
    "measure_lag",
    "promote_target",
    "unfence_source",
    "verify_positions",
    "wait_replayed",
]
