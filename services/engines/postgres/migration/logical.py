"""The engine half of `logical-upgrade`: one database moved into a newer major release by
logical replication, with what replication does not carry brought over separately.

    logical_preflight   what logical replication cannot carry, per table; changes nothing
    prepare_target      the roles (no passwords) and the database with its schema, on the target,
                        dumped by the *target's* newer pg_dump/pg_dumpall (a newer pg_dump reads
                        an older server; the reverse is refused)
    start_replication   a publication FOR ALL TABLES on the source, a subscription on the target
                        (the initial copy, then the stream); `wait_copied` waits for the copy
    logical_lag         how far behind the subscription is, in bytes and seconds
    fence_for_logical   the cutover fence of `cutover.fence_source` (a clean stop: the
                        guarantee), then the source started again where no client can reach it
                        so the subscription can fetch the rest; `wait_caught_up` waits for it
    copy_sequences      every sequence on the target set past the source's value (replication
                        does not carry them: PostgreSQL's documented limit)
    parity              row counts and a checksum per table, object counts per schema and kind,
                        and the sequences, compared (fingerprints.py, both sides read from this
                        node); the differences, empty when clean
    finish              drop the subscription (and with it the source's slot)

Why the source is started again after the fence: a clean shutdown ends the logical WAL sender
once the subscriber has confirmed what was sent, but only if the subscriber is connected at that
moment, and once the source is down the target's evidence (`pg_stat_subscription.latest_end_lsn`)
is gone with its apply worker. So the fence stops the source (the final position is then exact:
the shutdown checkpoint), starts it again with TCP off and its socket in a private directory of
the OS user (no client can connect, the fence's read-only default still set), and points the
subscription there. The target has everything once its apply worker has processed a position
past the final one: changes arrive and are applied in commit order (`streaming = off`, so no
transaction is applied in parallel behind the reported position).

Every step runs as the cluster's OS user over the local socket (trust/peer): no password is
held, and none is in any argv. Names (database, publication) reach SQL as psql `:"name"`
identifiers or `:'value'` literals, never pasted; steps are rerunnable.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from schemas.positions import format_lsn, parse_lsn
from services.engines.postgres.migration.cutover import FENCE_SETTING, fence_source
from services.engines.postgres.migration.instance import (
    FIELD_SEPARATOR,
    MigrationStepError,
    PgInstance,
)
from services.engines.postgres.oscmd import chown_to

NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'pg_toast')"
USER_SCHEMA = f"n.nspname NOT IN {SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg_temp%'"
PRIVATE_SOCKETS = "tidemark-fenced"
"""Directory beside the source's data directory where the fenced source listens, alone."""


def _plain(name: str, what: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise MigrationStepError(f"not a plain {what} name: {name!r}")
    return name


def _connect_args(instance: PgInstance, dbname: str) -> list[str]:
    return [
        "-h",
        str(instance.socket_dir),
        "-p",
        str(instance.port),
        "-U",
        instance.role,
        "-d",
        dbname,
    ]


def _rows(
    instance: PgInstance,
    dbname: str,
    sql: str,
    variables: Mapping[str, str] | None = None,
    *,
    single_transaction: bool = False,
) -> list[list[str]]:
    """`PgInstance.rows` in database `dbname`; the SQL (and anything large) goes in on stdin."""
    args = ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", FIELD_SEPARATOR]
    if single_transaction:
        args.append("-1")
    for name, value in (variables or {}).items():
        args += ["-v", f"{name}={value}"]
    out = instance.run("psql", [*args, *_connect_args(instance, dbname)], input=sql, timeout=600)
    return [line.split(FIELD_SEPARATOR) for line in out.splitlines() if line]


def _literal(text: str) -> str:
    """A standard-conforming SQL string literal (for a JSON document put on psql's stdin)."""
    return "'" + text.replace("'", "''") + "'"


def _conninfo(instance: PgInstance, dbname: str) -> str:
    # The subscriber's server connects as the OS user over the trusted socket: no password.
    return f"host={instance.socket_dir} port={instance.port} user={instance.role} dbname={dbname}"


def _user_databases(instance: PgInstance) -> list[str]:
    rows = instance.rows(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
        "AND datname <> 'postgres' ORDER BY datname"
    )
    return [row[0] for row in rows]


# -- validating -----------------------------------------------------------------------------------

TABLE_PROBLEMS_SQL = f"""
SELECT format('%I.%I', n.nspname, c.relname),
       c.relpersistence = 'u',
       c.relreplident = 'n'
         OR (c.relreplident = 'd' AND NOT EXISTS
               (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)),
       c.relreplident = 'i' AND NOT EXISTS
               (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND {USER_SCHEMA}
 ORDER BY 1
"""  # noqa: S608 - constants only

DATABASE_FACTS_SQL = """
SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, d.datlocprovider,
       (SELECT count(*) FROM pg_largeobject_metadata),
       (SELECT coalesce(string_agg(extname, ',' ORDER BY extname), '') FROM pg_extension)
  FROM pg_database d WHERE d.datname = current_database()
"""


def logical_preflight(
    source: PgInstance, target: PgInstance, dbnames: Sequence[str] | None = None
) -> list[str]:
    """What stops `logical-upgrade` of `dbnames` (default: every user database), one line per
    finding, tables named; empty: nothing found. Reads only."""
    problems: list[str] = []
    src = source.rows(
        "SELECT current_setting('server_version_num'), current_setting('wal_level'), "
        "current_setting('max_replication_slots')::int - (SELECT count(*) FROM "
        "pg_replication_slots), current_setting('max_wal_senders')"
    )[0]
    tgt_version, tgt_available = target.rows(
        "SELECT current_setting('server_version_num'), "
        "(SELECT string_agg(name, ',') FROM pg_available_extensions)"
    )[0]
    tgt_db = target.rows(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
        "WHERE datname = 'template1'"
    )[0]
    if src[1] != "logical":
        problems.append(
            f"source: wal_level is {src[1]}; logical replication needs logical (a restart)"
        )
    if int(src[2]) < 1:
        problems.append("source: no free replication slot for the subscription")
    if int(src[3]) < 1:
        problems.append("source: max_wal_senders is 0")
    if int(tgt_version) // 10000 < int(src[0]) // 10000:
        problems.append(f"target: release {tgt_version} is older than the source's {src[0]}")
    available = set(tgt_available.split(","))
    for dbname in dbnames if dbnames is not None else _user_databases(source):
        facts = _rows(source, dbname, DATABASE_FACTS_SQL)[0]
        encoding, collate, ctype, provider, large_objects, extensions = facts
        if (encoding, collate, ctype) != tuple(tgt_db):
            problems.append(
                f"{dbname}: encoding/collation {encoding}/{collate}/{ctype} differs from the "
                f"target's {'/'.join(tgt_db)}: sort order and indexes may differ"
            )
        if provider != "c":
            problems.append(f"{dbname}: locale provider {provider!r}: only libc is prepared")
        if int(large_objects):
            problems.append(f"{dbname}: {large_objects} large objects: not replicated")
        for extension in extensions.split(","):
            if extension and extension not in available:
                problems.append(f"{dbname}: extension {extension} is not available on the target")
        for table, unlogged, no_identity, lost_index in _rows(source, dbname, TABLE_PROBLEMS_SQL):
            if unlogged == "t":
                problems.append(f"{dbname}.{table}: unlogged: not replicated")
            if no_identity == "t":
                problems.append(
                    f"{dbname}.{table}: no primary key and no replica identity: "
                    "its UPDATEs and DELETEs cannot be replicated"
                )
            if lost_index == "t":
                problems.append(f"{dbname}.{table}: replica identity index is missing")
    return problems


# -- preparing ------------------------------------------------------------------------------------

CREATE_ROLE = re.compile(r'^CREATE ROLE ("(?:[^"]|"")+"|[^ ;]+);$')


def _unquote(identifier: str) -> str:
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier


def _copy_roles(source: PgInstance, target: PgInstance) -> None:
    script = target.run(
        "pg_dumpall",
        ["--roles-only", "--no-role-passwords", *_connect_args(source, "postgres")[:-2]],
    )
    existing = {row[0] for row in target.rows("SELECT rolname FROM pg_roles")}
    kept = []
    for line in script.splitlines():
        match = CREATE_ROLE.match(line)
        # A role the target has already (its bootstrap superuser, a rerun) is altered, not
        # created again: the ALTER ROLE after it still sets the source's attributes.
        if match is None or _unquote(match.group(1)) not in existing:
            kept.append(line)
    target.rows("\n".join(kept) + "\n")


def prepare_target(source: PgInstance, target: PgInstance, dbname: str) -> None:
    """Create `dbname` on the target with the source's roles (no passwords: they are the
    source's secrets, set again by their owners), encoding, locale and schema (no publications,
    no subscriptions). Rerunnable: the schema is restored in one transaction, so a database
    holding any relation of its own has all of it."""
    db_vars = {"db": dbname}
    _copy_roles(source, target)
    row = source.rows(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba) "
        "FROM pg_database WHERE datname = :'db'",
        db_vars,
    )
    if not row:
        raise MigrationStepError(f"source has no database {dbname!r}")
    encoding, collate, ctype, owner = row[0]
    if not target.rows("SELECT 1 FROM pg_database WHERE datname = :'db'", db_vars):
        target.rows(
            "CREATE DATABASE :\"db\" TEMPLATE template0 ENCODING :'enc' "
            "LC_COLLATE :'collate' LC_CTYPE :'ctype' OWNER :\"owner\"",
            {**db_vars, "enc": encoding, "collate": collate, "ctype": ctype, "owner": owner},
        )
    present = _rows(
        target,
        dbname,
        f"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "  # noqa: S608
        f"WHERE {USER_SCHEMA}",
    )
    if int(present[0][0]):
        return
    schema = target.run(
        "pg_dump",
        [
            "--schema-only",
            "--no-publications",
            "--no-subscriptions",
            *_connect_args(source, dbname),
        ],
    )
    _rows(target, dbname, schema, single_transaction=True)


# -- copying and catching up ----------------------------------------------------------------------


def start_replication(source: PgInstance, target: PgInstance, dbname: str, name: str) -> None:
    """Publish every table of `dbname` on the source and subscribe the target to it (the
    initial copy starts at once). Rerunnable: what exists is kept."""
    variables = {"name": _plain(name, "publication"), "db": dbname}
    if not _rows(source, dbname, "SELECT 1 FROM pg_publication WHERE pubname = :'name'", variables):
        _rows(source, dbname, 'CREATE PUBLICATION :"name" FOR ALL TABLES', variables)
    if _rows(target, dbname, "SELECT 1 FROM pg_subscription WHERE subname = :'name'", variables):
        return
    # CREATE SUBSCRIPTION makes the source's slot before it commits; one interrupted in between
    # leaves the slot, unused, and the rerun would fail on it.
    source.rows(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = :'name' AND NOT active",
        variables,
    )
    _rows(
        target,
        dbname,
        'CREATE SUBSCRIPTION :"name" CONNECTION :\'conninfo\' PUBLICATION :"name" '
        "WITH (copy_data = true, streaming = off)",
        {**variables, "conninfo": _conninfo(source, dbname)},
    )


def wait_copied(target: PgInstance, dbname: str, name: str, *, timeout: float = 300.0) -> None:
    """Wait until the initial copy of every table is done (`srsubstate` ready)."""
    deadline = time.monotonic() + timeout
    sql = (
        "SELECT count(*) FILTER (WHERE r.srsubstate <> 'r'), count(*) FROM pg_subscription_rel r "
        "JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = :'name'"
    )
    while True:
        pending, tables = _rows(target, dbname, sql, {"name": name})[0]
        if int(tables) and not int(pending):
            return
        if time.monotonic() > deadline:
            raise MigrationStepError(
                f"initial copy: {pending} of {tables} tables not ready in {timeout:g} s",
                retryable=True,
            )
        time.sleep(0.1)


class LogicalLag(NamedTuple):
    """How far the subscription is behind: WAL bytes the source wrote that the target has not
    confirmed, and the source's last measured apply delay (0 when idle and caught up)."""

    bytes: int
    seconds: float


def logical_lag(source: PgInstance, target: PgInstance, name: str) -> LogicalLag:
    row = source.rows(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(r.replay_lsn, "
        "s.confirmed_flush_lsn))::bigint, extract(epoch FROM r.replay_lag), r.pid IS NOT NULL "
        "FROM pg_replication_slots s LEFT JOIN pg_stat_replication r "
        "ON r.pid = s.active_pid WHERE s.slot_name = :'name'",
        {"name": name},
    )
    if not row:
        raise MigrationStepError(f"source has no slot {name!r}: replication not started")
    lag_bytes, lag_seconds, connected = row[0]
    if connected != "t":
        # No WAL sender: the source cannot time the delay; the target's last message can.
        lag_seconds = target.value(
            "SELECT coalesce(max(extract(epoch FROM now() - latest_end_time)), 0) "
            "FROM pg_stat_subscription WHERE subname = :'name'",
            {"name": name},
        )
    return LogicalLag(max(int(lag_bytes or 0), 0), float(lag_seconds or 0))


# -- cutover --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogicalFence:
    """The source's final position, and the source as it runs fenced (private socket only)."""

    final_lsn: int
    fenced: PgInstance
    started_monotonic: float


def _private_socket_dir(source: PgInstance) -> Path:
    path = source.data_dir.parent / PRIVATE_SOCKETS
    path.mkdir(mode=0o700, exist_ok=True)
    chown_to(path, source.user)
    return path


def _final_mark(private_dir: Path, name: str) -> Path:
    """Where the fence writes the final position, so a rerun after the restart still knows it
    (pg_control's checkpoint moves on once the source runs again)."""
    return private_dir / f"{name}.final_lsn"


def fence_for_logical(
    source: PgInstance, target: PgInstance, dbname: str, name: str
) -> LogicalFence:
    """Fence the source (`cutover.fence_source`: after it no commit is accepted), then start it
    again unreachable by clients and point the subscription at it (see the module docstring).
    Rerunnable: a fence already raised is read back from its mark, not raised again."""
    private = replace(source, socket_dir=_private_socket_dir(source))
    mark = _final_mark(private.socket_dir, _plain(name, "subscription"))
    started = time.monotonic()
    if mark.exists():
        final_lsn = parse_lsn(mark.read_text().strip())
    else:
        final_lsn = fence_source(source).final_lsn
        mark.write_text(format_lsn(final_lsn) + "\n")
    if not private.is_running():
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{private.socket_dir}' "
            "-c wal_retrieve_retry_interval=200ms"  # the subscriptions' workers start again soon
        )
        log = source.data_dir.parent / f"{source.data_dir.name}.fenced.log"
        private.pg_ctl("-l", str(log), "-o", options, "start")
    if private.value(f"SELECT current_setting('{FENCE_SETTING}')") != "on":
        raise MigrationStepError("the privately started source is not read-only: fence lost")
    _rows(
        target,
        dbname,
        "ALTER SUBSCRIPTION :\"name\" CONNECTION :'conninfo'",
        {"name": name, "conninfo": _conninfo(private, dbname)},
    )
    return LogicalFence(final_lsn, private, started)


def wait_caught_up(
    target: PgInstance, dbname: str, name: str, final_lsn: int, *, timeout: float = 300.0
) -> int:
    """Wait until the subscription's apply worker has processed a position past the source's
    final one (its shutdown checkpoint): every commit before it is then applied."""
    deadline = time.monotonic() + timeout
    sql = (
        "SELECT coalesce(max(latest_end_lsn), '0/0') FROM pg_stat_subscription "
        "WHERE subname = :'name' AND relid IS NULL"
    )
    while True:
        reached = parse_lsn(_rows(target, dbname, sql, {"name": name})[0][0])
        if reached > final_lsn:
            return reached
        if time.monotonic() > deadline:
            raise MigrationStepError(
                f"subscription at {format_lsn(reached)}, not past the source's final "
                f"{format_lsn(final_lsn)} in {timeout:g} s",
                retryable=True,
            )
        time.sleep(0.05)


SEQUENCES_SQL = """
SELECT coalesce(json_agg(json_build_object('s', schemaname, 'n', sequencename, 'v', last_value)),
                '[]')
  FROM pg_sequences WHERE last_value IS NOT NULL
"""


def copy_sequences(source: PgInstance, target: PgInstance, dbname: str) -> int:
    """Set every sequence on the target that the source has used to the source's value, as
    called: the target's next value is past every value the source handed out (a sequence's
    `last_value` covers its cached values too). Run after the fence. Returns how many."""
    found = _rows(source, dbname, SEQUENCES_SQL)[0][0]
    count = len(json.loads(found))
    _rows(
        target,
        dbname,
        # The source's answer, quoted as one literal: names reach SQL only through %I.
        "SELECT count(setval(format('%I.%I', s, n)::regclass, v, true)) "  # noqa: S608
        f"FROM json_to_recordset({_literal(found)}::json) AS x(s text, n text, v bigint)",
    )
    return count


# -- parity ---------------------------------------------------------------------------------------


def parity(source: PgInstance, target: PgInstance, dbname: str) -> list[str]:
    """What differs between the source's and the target's `dbname` (`fingerprints.compare` of
    their fingerprints): per table its row count and checksum, per schema the objects of each kind,
    and sequences behind the source's. Empty: parity holds. Meaningful only with the source
    fenced."""
    # fingerprints.py reads with this module's helpers: imported at the top, a cycle.
    from services.engines.postgres.migration.fingerprints import compare, fingerprint

    return compare(fingerprint(source, dbname), fingerprint(target, dbname))


def finish(target: PgInstance, dbname: str, name: str) -> None:
    """Drop the subscription: the target stands alone. Its slot on the source goes with it
    while the fenced source is reachable. Rerunnable."""
    _rows(
        target,
        dbname,
        'DROP SUBSCRIPTION IF EXISTS :"name"',
        {"name": _plain(name, "subscription")},
    )
