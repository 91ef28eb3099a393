"""What a cluster is, for the advisor and the `validating` phase. Reads only."""

from __future__ import annotations

from dataclasses import dataclass

from services.engines.postgres.migration.instance import PgInstance

FACTS_SQL = """
SELECT current_setting('server_version_num'),
       (SELECT sum(pg_database_size(oid)) FROM pg_database WHERE datallowconn),
       current_setting('wal_level'),
       current_setting('max_wal_senders'),
       current_setting('max_replication_slots'),
       (SELECT count(*) FROM pg_replication_slots),
       current_setting('data_checksums'),
       current_setting('wal_log_hints'),
       pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       (SELECT count(*) FROM pg_database WHERE datallowconn AND datname <> 'postgres'),
       (SELECT coalesce(string_agg(extname || '=' || extversion, ',' ORDER BY extname), '')
          FROM pg_extension),
       (SELECT count(*) > 0 FROM pg_hba_file_rules
         WHERE 'replication' = ANY(database) AND error IS NULL AND auth_method <> 'reject'),
       pg_is_in_recovery()
  FROM pg_database d WHERE d.datname = current_database()
"""


@dataclass(frozen=True)
class PgFacts:
    """The facts of one cluster. `problems_as_source` says what stops it being streamed from."""

    version_num: int
    size_bytes: int
    wal_level: str
    max_wal_senders: int
    max_replication_slots: int
    replication_slots_used: int
    data_checksums: bool
    wal_log_hints: bool
    encoding: str
    collate: str
    ctype: str
    user_databases: int
    extensions: dict[str, str]
    hba_allows_replication: bool
    in_recovery: bool

    @property
    def major(self) -> int:
        return self.version_num // 10000

    def problems_as_source(self) -> list[str]:
        """Why this cluster cannot be the source of `physical-stream` (empty: it can)."""
        problems = []
        if self.wal_level not in ("replica", "logical"):
            problems.append(f"wal_level is {self.wal_level}; streaming needs replica or logical")
        if self.max_wal_senders < 1:
            problems.append("max_wal_senders is 0: no WAL sender for the standby")
        if self.replication_slots_used >= self.max_replication_slots:
            problems.append(
                f"all {self.max_replication_slots} replication slots are in use; one more is needed"
            )
        if not self.hba_allows_replication:
            problems.append("pg_hba.conf has no rule admitting replication connections")
        if self.in_recovery:
            problems.append("the cluster is itself a standby")
        if not (self.data_checksums or self.wal_log_hints):
            # Not a stop for the copy, but for the way back: pg_rewind needs one of them.
            problems.append(
                "neither data checksums nor wal_log_hints: rollback by pg_rewind is impossible"
            )
        return problems


def gather_facts(instance: PgInstance) -> PgFacts:
    row = instance.rows(FACTS_SQL)[0]
    extensions = dict(item.split("=", 1) for item in row[12].split(",") if item)
    return PgFacts(
        version_num=int(row[0]),
        size_bytes=int(row[1] or 0),
        wal_level=row[2],
        max_wal_senders=int(row[3]),
        max_replication_slots=int(row[4]),
        replication_slots_used=int(row[5]),
        data_checksums=row[6] == "on",
        wal_log_hints=row[7] == "on",
        encoding=row[8],
        collate=row[9],
        ctype=row[10],
        user_databases=int(row[11]),
        extensions=extensions,
        hba_allows_replication=row[13] == "t",
        in_recovery=row[14] == "t",
    )
