"""PostgreSQL migration steps: the engine half of the `physical-stream` method.

    preflight.py   facts of a cluster (version, size, WAL and replication settings, checksums,
                   encoding, extensions); changes nothing
    standby.py     build the target as a streaming standby (pg_basebackup -R, a physical slot)
                   and read the lag from both sides
    cutover.py     fence the source, wait for the final position, promote, verify, unfence
    archive.py     the `physical-archive` method: the target restored from Tidemark's base
                   backup and fed by the archive (`restore_command`), and its fence, which
                   closes the segment holding the final position so the archive holds it
    rollback.py    make the old source follow the new primary (pg_rewind where needed)
    logical.py     the `logical-upgrade` method (not wired yet): one database into a newer
                   major release by logical replication, with roles, schema and sequences
                   brought over separately
    dump.py        the `dump` method (not wired yet): pg_dump -Fd into the object store with a
                   manifest written last, pg_restore from there into a database marked as the
                   migration's (so a failed restore starts again from the store), errors judged
                   against the known-benign list, the source's and target's fingerprints
    fingerprints.py
                   the parity check in two halves, so source and target need not share a
                   node: a database's `fingerprint` (rows and checksum per table, objects per
                   schema and kind, sequences), which can travel, and `compare` of two

Each step is a function of the instances it touches (`PgInstance`: where a cluster lives and
which OS user runs it) and knows no service: the executor passes what it hosts. Steps are
idempotent, so a step interrupted by a restart is rerun from its start. Everything runs as the
cluster's OS user over the local socket (peer/trust), as the rest of the PostgreSQL engine does.
"""

from services.engines.postgres.migration.archive import (
    ArchiveFeed,
    ArchiveLag,
    build_from_archive,
    fence_archived_source,
    follow_archive,
    measure_archive_lag,
    unfence_archived_source,
)
from services.engines.postgres.migration.cutover import (
    Fence,
    fence_source,
    promote_target,
    unfence_source,
    verify_positions,
    wait_replayed,
)
from services.engines.postgres.migration.dump import (
    KNOWN_BENIGN,
    DumpManifest,
    RestoreOutcome,
    dump_to_store,
    read_manifest,
    restore_from_store,
)
from services.engines.postgres.migration.fingerprints import Fingerprint, compare, fingerprint
from services.engines.postgres.migration.instance import MigrationStepError, PgInstance
from services.engines.postgres.migration.logical import (
    LogicalFence,
    LogicalLag,
    copy_sequences,
    fence_for_logical,
    finish,
    logical_lag,
    logical_preflight,
    parity,
    prepare_target,
    start_replication,
    wait_caught_up,
    wait_copied,
)
from services.engines.postgres.migration.preflight import PgFacts, gather_facts
from services.engines.postgres.migration.rollback import follow_new_primary
from services.engines.postgres.migration.standby import Lag, build_standby, measure_lag

__all__ = [
    "KNOWN_BENIGN",
    "ArchiveFeed",
    "ArchiveLag",
    "DumpManifest",
    "Fence",
    "Fingerprint",
    "Lag",
    "LogicalFence",
    "LogicalLag",
    "MigrationStepError",
    "PgFacts",
    "PgInstance",
    "RestoreOutcome",
    "build_from_archive",
    "build_standby",
    "compare",
    "copy_sequences",
    "dump_to_store",
    "fence_archived_source",
    "fence_for_logical",
    "fence_source",
    "fingerprint",
    "finish",
    "follow_archive",
    "follow_new_primary",
    "gather_facts",
    "logical_lag",
    "logical_preflight",
    "measure_archive_lag",
    "measure_lag",
    "parity",
    "prepare_target",
    "promote_target",
    "read_manifest",
    "restore_from_store",
    "start_replication",
    "unfence_archived_source",
    "unfence_source",
    "verify_positions",
    "wait_caught_up",
    "wait_copied",
    "wait_replayed",
]
