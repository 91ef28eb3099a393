"""The executor's `logical-upgrade` steps: a `migration.<step>` command in, logical.py's functions
run on the two clusters, a `MigrationStepResult` out.

    preflight  source: what logical replication cannot carry, per table (logical.py's findings
               without the target, which does not exist yet); target: the release asked for is
               on this node, its directory is empty, its port free, its extensions listed
    prepare    a new cluster of the target's release (initdb with the source database's encoding
               and locale, the source's access rules), started; roles and schema; the source's
               schema signature, so a DDL on the source during the migration is seen
    copy       publication and subscription; the initial table sync, its bytes reported
    lag        bytes and seconds behind, and the source's schema signature again
    fence      logical.fence_for_logical: the clean stop, then the source alone on a private
               socket, still read-only to every session but the subscription's
    final_sync the subscription past the final position, then every sequence set past the
               source's
    parity     rows and checksums per table, objects per schema and kind, sequences
    promote    the forward subscription dropped, and the way back set up *before* the target
               takes a write: a publication on the target, a subscription of the fenced source
               to it (no initial copy); from then every commit on the target reaches the source
    unfence    abort before the point of no return: the subscription and its slot dropped, the
               source restarted as it was, the target stopped (its directory kept)
    rewind     rollback after it: the target fenced the same way, the source's subscription past
               the target's final position, sequences set back past the target's, the source
               opened as before

The new cluster is marked (`MARK`, beside its directory) with the migration's id before initdb
writes anything, so a rerun after a crash knows the directory is its own, and a preflight or a
prepare never writes into a directory that is not.
"""

from __future__ import annotations

import contextlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from schemas.positions import format_lsn, parse_lsn
from services.engines.postgres.migration.cutover import FENCE_SETTING, fence_source, unfence_source
from services.engines.postgres.migration.fingerprints import compare, fingerprint
from services.engines.postgres.migration.instance import (
    MigrationStepError,
    PgInstance,
    clear_dir,
)
from services.engines.postgres.migration.logical import (
    DATABASE_FACTS_SQL,
    PRIVATE_SOCKETS,
    TABLE_PROBLEMS_SQL,
    USER_SCHEMA,
    _conninfo,
    _literal,
    _plain,
    _rows,
    copy_sequences,
    finish,
    prepare_target,
    wait_caught_up,
)
from services.engines.postgres.oscmd import chown_to

MARK_SUFFIX = ".tidemark-migration"
WRITABLE = f"-c {FENCE_SETTING}=off"
"""The session setting that lets Tidemark's own work write on a fenced cluster (no client can
reach it: it listens on a private socket only)."""

SCHEMA_SIGNATURE_SQL = f"""
SELECT md5(coalesce(string_agg(d, E'\\n' ORDER BY d), '')) FROM (
  SELECT format('%s.%s %s %s', n.nspname, c.relname, c.relkind,
                (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                   || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                                   ', ' ORDER BY a.attnum)
                   FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)) AS d
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {USER_SCHEMA}
  UNION ALL
  SELECT format('constraint %s.%s %s', n.nspname, co.conname, pg_get_constraintdef(co.oid))
    FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace WHERE {USER_SCHEMA}
  UNION ALL
  SELECT format('index %s', pg_get_indexdef(i.indexrelid))
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMA}
  UNION ALL
  SELECT format('function %s.%s(%s)', n.nspname, p.proname, pg_get_function_arguments(p.oid))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMA}
) AS definitions
"""  # noqa: S608 - constants only
"""What a DDL changes: relations and their columns, constraints, indexes, functions. Taken at
`prepare` and at every lag sample and parity; a difference stops the migration (logical
replication carries rows, not schema changes)."""


def names(slot: str) -> tuple[str, str]:
    """The forward subscription (and its publication and slot) and the way back's."""
    return _plain(slot, "subscription"), _plain((slot + "_back")[:63], "subscription")


def fenced(source: PgInstance) -> PgInstance:
    """The fenced source as it runs after `fence_for_logical`: on its private socket only."""
    return replace(source, socket_dir=source.data_dir.parent / PRIVATE_SOCKETS)


def writable(instance: PgInstance) -> PgInstance:
    return replace(instance, session_options=WRITABLE)


def schema_signature(instance: PgInstance, dbname: str) -> str:
    return _rows(instance, dbname, SCHEMA_SIGNATURE_SQL)[0][0]


# -- validating ---------------------------------------------------------------------------------


def source_findings(source: PgInstance, dbname: str, *, replicates: bool) -> list[str]:
    """What stops moving `dbname` (logical.logical_preflight's source half): with `replicates`,
    what logical replication cannot carry; always, what no method carries (large objects for
    logical replication; nothing for a dump). Reads only."""
    problems: list[str] = []
    if not _rows(
        source, "postgres", "SELECT 1 FROM pg_database WHERE datname = :'db'", {"db": dbname}
    ):
        return [f"the source has no database {dbname!r} (option database)"]
    facts = _rows(source, dbname, DATABASE_FACTS_SQL)[0]
    large_objects = int(facts[4])
    if not replicates:
        return problems
    wal_level, free_slots, senders = source.rows(
        "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int - "
        "(SELECT count(*) FROM pg_replication_slots), current_setting('max_wal_senders')"
    )[0]
    if wal_level != "logical":
        problems.append(f"wal_level is {wal_level}; logical replication needs logical (a restart)")
    if int(free_slots) < 1:
        problems.append("no free replication slot for the subscription")
    if int(senders) < 1:
        problems.append("max_wal_senders is 0")
    if large_objects:
        problems.append(f"{dbname}: {large_objects} large objects: not replicated (use dump)")
    for table, unlogged, no_identity, lost_index in _rows(source, dbname, TABLE_PROBLEMS_SQL):
        if unlogged == "t":
            problems.append(f"{dbname}.{table}: unlogged: not replicated (SET LOGGED, or dump)")
        if no_identity == "t":
            problems.append(
                f"{dbname}.{table}: no primary key and no replica identity: its UPDATEs and "
                "DELETEs cannot be replicated (add a key or REPLICA IDENTITY FULL, or dump)"
            )
        if lost_index == "t":
            problems.append(f"{dbname}.{table}: replica identity index is missing")
    return problems


def source_facts(source: PgInstance, dbname: str) -> dict[str, str]:
    version, size, encoding, collate, ctype, extensions = _rows(
        source,
        dbname,
        "SELECT current_setting('server_version_num'), pg_database_size(current_database()), "
        "pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, "
        "(SELECT coalesce(string_agg(extname, ',' ORDER BY extname), '') FROM pg_extension) "
        "FROM pg_database d WHERE d.datname = current_database()",
    )[0]
    return {
        "database": dbname,
        "version_num": version,
        "major": str(int(version) // 10000),
        "size_bytes": size,
        "encoding": encoding,
        "collate": collate,
        "ctype": ctype,
        "extensions": extensions,
    }


def available_extensions(bindir: Path, major: int) -> set[str]:
    """The extensions a release can create (its `*.control` files), wherever its layout keeps
    them (the distribution's /usr/share/postgresql/N, or a relocatable share/ beside bin/)."""
    for root in (
        bindir.parent / "share" / "extension",
        bindir.parent / "share" / "postgresql" / "extension",
        Path("/usr/share/postgresql") / str(major) / "extension",
    ):
        if root.is_dir():
            return {p.name.removesuffix(".control") for p in root.glob("*.control")}
    return set()


def mark_of(target: PgInstance) -> Path:
    return target.data_dir.parent / f"{target.data_dir.name}{MARK_SUFFIX}"


def is_ours(target: PgInstance, migration: str) -> bool:
    try:
        return mark_of(target).read_text(encoding="utf-8").split()[0] == migration
    except (OSError, IndexError):
        return False


def target_problems(target: PgInstance, source: PgInstance | None, migration: str) -> list[str]:
    problems: list[str] = []
    ours = is_ours(target, migration)
    if target.data_dir.exists() and any(target.data_dir.iterdir()) and not ours:
        problems.append(
            f"the target directory {target.data_dir} is not empty; a migration never writes "
            "over existing files (give an empty or new directory)"
        )
    elif not target.data_dir.exists() and not target.data_dir.parent.is_dir():
        problems.append(f"the target directory's parent {target.data_dir.parent} does not exist")
    if not ours and (target.socket_dir / f".s.PGSQL.{target.port}").exists():
        problems.append(f"port {target.port} is already in use on this node")
    if source is not None and source.port == target.port:
        problems.append("the target's port is the source's")
    return problems


# -- preparing ----------------------------------------------------------------------------------

CLUSTER_SETTINGS = (
    "wal_level = logical",
    "max_replication_slots = 10",
    "max_wal_senders = 10",
    "wal_retrieve_retry_interval = 200ms",
)
"""What the new cluster needs beyond initdb's defaults: it publishes the way back, and its
subscription's apply worker, restarted when the fence points it at the fenced source, starts
again within 200 ms rather than 5 s (measured: 4.6 s of a 1 GiB cutover went to that wait)."""


def _setting(instance: PgInstance, name: str) -> str:
    # Marked: psql prints an empty value as an empty line, which reads as no row.
    return instance.value(f"SELECT '=' || current_setting('{name}')").removeprefix("=")


def ensure_cluster(source: PgInstance, target: PgInstance, dbname: str, migration: str) -> bool:
    """A new cluster of the target's release in its (empty) directory, started; True if this
    run made it. The mark goes first, so a rerun after a crash mid-initdb clears only its own
    half-made directory."""
    mark = mark_of(target)
    made = (target.data_dir / "PG_VERSION").exists() and is_ours(target, migration)
    if made and mark.read_text(encoding="utf-8").split()[1:] == ["ready"]:
        target.start()
        target.wait_until("SELECT true", timeout=60, what="the target accepting connections")
        return False
    if target.data_dir.exists() and any(target.data_dir.iterdir()):
        if not is_ours(target, migration):
            raise MigrationStepError(
                f"the target directory {target.data_dir} is not empty and not this migration's"
            )
        with contextlib.suppress(MigrationStepError):
            target.pg_ctl("stop", "-m", "immediate")
        clear_dir(target.data_dir)
    mark.write_text(f"{migration} initdb\n", encoding="utf-8")
    target.data_dir.mkdir(mode=0o700, exist_ok=True)
    chown_to(target.data_dir, target.user)
    encoding, collate, ctype = _rows(
        source,
        dbname,
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
        "WHERE datname = current_database()",
    )[0]
    listen = _setting(source, "listen_addresses")
    hba, ident = _setting(source, "hba_file"), _setting(source, "ident_file")
    target.run(
        "initdb",
        [
            "-D",
            str(target.data_dir),
            "-U",
            target.role,
            "-E",
            encoding,
            f"--lc-collate={collate}",
            f"--lc-ctype={ctype}",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
        ],
        timeout=300,
    )
    # The source's access rules: who could reach the database there can reach it here.
    for path, name in ((hba, "pg_hba.conf"), (ident, "pg_ident.conf")):
        with contextlib.suppress(OSError):
            shutil.copyfile(path, target.data_dir / name)
            chown_to(target.data_dir / name, target.user)
    with (target.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# Tidemark migration target\n")
        conf.write(f"port = {target.port}\n")
        conf.write(f"listen_addresses = {_literal(listen)}\n")
        conf.write(f"unix_socket_directories = {_literal(str(target.socket_dir))}\n")
        conf.writelines(line + "\n" for line in CLUSTER_SETTINGS)
    mark.write_text(f"{migration} ready\n", encoding="utf-8")
    target.start()
    target.wait_until("SELECT true", timeout=60, what="the target accepting connections")
    return True


def prepare(source: PgInstance, target: PgInstance, dbname: str, migration: str) -> dict[str, str]:
    created = ensure_cluster(source, target, dbname, migration)
    prepare_target(source, target, dbname)
    return {
        "created_cluster": str(created).lower(),
        "release": _setting(target, "server_version_num"),
        "schema_signature": schema_signature(source, dbname),
    }


# -- copying ------------------------------------------------------------------------------------

SYNC_STATE_SQL = """
SELECT count(*) FILTER (WHERE r.srsubstate <> 'r'), count(*),
       (SELECT coalesce(sum(sync_error_count), 0) FROM pg_stat_subscription_stats st
         WHERE st.subname = :'name')
  FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
 WHERE s.subname = :'name'
"""
SYNC_ERRORS = 5
"""Failed table syncs (each retried by PostgreSQL) before the copy is said to fail."""


def copy_state(target: PgInstance, dbname: str, name: str) -> tuple[int, int, int]:
    pending, tables, errors = _rows(target, dbname, SYNC_STATE_SQL, {"name": name})[0]
    return int(pending), int(tables), int(errors)


def database_size(instance: PgInstance, dbname: str) -> int:
    return int(_rows(instance, dbname, "SELECT pg_database_size(current_database())")[0][0])


def check_copy(target: PgInstance, dbname: str, name: str) -> bool:
    """Is the initial copy of every table done? A table whose sync keeps failing fails it."""
    pending, tables, errors = copy_state(target, dbname, name)
    if errors >= SYNC_ERRORS:
        raise MigrationStepError(
            f"the initial copy failed {errors} times ({pending} of {tables} tables not synced); "
            "the target's log says why"
        )
    return tables > 0 and pending == 0


def settle_copy(target: PgInstance, dbname: str) -> None:
    """After the initial copy: VACUUM ANALYZE of the target's database. Replication carries no
    planner statistics, and the copied rows' first reader would set their hint bits (writing
    every page, and logging it where data checksums are on, as a new 18 cluster has them):
    both are done now, while the source serves, rather than by the cutover's parity scan or
    the first queries after it."""
    target.run(
        "vacuumdb",
        [
            "--analyze",
            "-h",
            str(target.socket_dir),
            "-p",
            str(target.port),
            "-U",
            target.role,
            "-d",
            dbname,
        ],
        timeout=86400,
    )


# -- cutover ------------------------------------------------------------------------------------


def final_sync(
    source: PgInstance, target: PgInstance, dbname: str, name: str, final: int
) -> tuple[int, int]:
    reached = wait_caught_up(target, dbname, name, final, timeout=300)
    return reached, copy_sequences(fenced(source), target, dbname)


def check_parity(source: PgInstance, target: PgInstance, dbname: str) -> tuple[list[str], str]:
    """Parity of the fenced source and the target, both read at once (the cutover waits for
    the slower, not the sum), and the source's schema signature."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        theirs = pool.submit(fingerprint, fenced(source), dbname)
        ours = pool.submit(fingerprint, target, dbname)
        differences = compare(theirs.result(), ours.result())
    return differences, schema_signature(fenced(source), dbname)


def _subscription_exists(instance: PgInstance, dbname: str, name: str) -> bool:
    return bool(
        _rows(
            instance,
            dbname,
            "SELECT 1 FROM pg_subscription WHERE subname = :'name'",
            {"name": name},
        )
    )


def open_with_way_back(
    source: PgInstance, target: PgInstance, dbname: str, name: str, back: str
) -> int:
    """The point of no return, made reversible first: the forward subscription dropped (its
    slot on the fenced source with it), a publication of the target, and the fenced source
    subscribed to it without an initial copy, its slot made now, before any client writes on
    the target. Returns the position the target's apply had processed. Rerunnable."""
    old = writable(fenced(source))
    reached = 0
    if _subscription_exists(target, dbname, name):
        reached = parse_lsn(
            _rows(
                target,
                dbname,
                "SELECT coalesce(max(latest_end_lsn), '0/0') FROM pg_stat_subscription "
                "WHERE subname = :'name' AND relid IS NULL",
                {"name": name},
            )[0][0]
        )
        finish(target, dbname, name)
    variables = {"name": back}
    if not _rows(target, dbname, "SELECT 1 FROM pg_publication WHERE pubname = :'name'", variables):
        _rows(target, dbname, 'CREATE PUBLICATION :"name" FOR ALL TABLES', variables)
    if not _subscription_exists(old, dbname, back):
        target.rows(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = :'name' AND NOT active",
            variables,
        )
        _rows(
            old,
            dbname,
            'CREATE SUBSCRIPTION :"name" CONNECTION :\'conninfo\' PUBLICATION :"name" '
            "WITH (copy_data = false, streaming = off)",
            {
                **variables,
                "conninfo": _conninfo(target, dbname),
            },
        )
    return reached


# -- abort and rollback -------------------------------------------------------------------------


def _drop_subscription_offline(instance: PgInstance, dbname: str, name: str) -> None:
    """Drop a subscription whose publisher may be down: detached from its slot first (the
    slot is dropped on the publisher's side by the caller)."""
    if not _subscription_exists(instance, dbname, name):
        return
    for sql in (
        'ALTER SUBSCRIPTION :"name" DISABLE',
        'ALTER SUBSCRIPTION :"name" SET (slot_name = NONE)',
        'DROP SUBSCRIPTION :"name"',
    ):
        _rows(instance, dbname, sql, {"name": name})


def _stop_private(instance: PgInstance) -> None:
    private = fenced(instance)
    if private.socket_dir.is_dir() and (private.socket_dir / f".s.PGSQL.{instance.port}").exists():
        with contextlib.suppress(MigrationStepError):
            instance.pg_ctl("stop", "-m", "fast")


def abort(source: PgInstance, target: PgInstance | None, dbname: str, name: str, back: str) -> None:
    """Before the point of no return: the source as it was (unfenced, serving), the migration's
    subscription, publication and slot gone, the target stopped with its directory kept."""
    if _way_back_exists(source, dbname, back):
        raise MigrationStepError(
            "the target was opened (the way back is set up on the source): unfencing the source "
            "now would make two writable primaries; roll back instead"
        )
    if target is not None and target.is_running():
        with contextlib.suppress(MigrationStepError):  # its database may not exist yet
            _drop_subscription_offline(target, dbname, name)
    _stop_private(source)
    if not source.is_running() or source.value(f"SHOW {FENCE_SETTING}") == "on":
        unfence_source(source)
    source.rows(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = :'name' AND NOT active",
        {"name": name},
    )
    with contextlib.suppress(MigrationStepError):
        _rows(source, dbname, 'DROP PUBLICATION IF EXISTS :"name"', {"name": name})
    (fenced(source).socket_dir / f"{name}.final_lsn").unlink(missing_ok=True)
    if target is not None and target.is_running():
        target.pg_ctl("stop", "-m", "fast")


def _way_back_exists(source: PgInstance, dbname: str, back: str) -> bool:
    for instance in (fenced(source), source):
        with contextlib.suppress(MigrationStepError):
            if instance.is_running() and _subscription_exists(instance, dbname, back):
                return True
    return False


def _start_private(instance: PgInstance) -> PgInstance:
    private = fenced(instance)
    _start_private_dir(instance)
    if not private.is_running():
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{private.socket_dir}' "
            "-c wal_retrieve_retry_interval=200ms"
        )
        log = instance.data_dir.parent / f"{instance.data_dir.name}.fenced.log"
        private.pg_ctl("-l", str(log), "-o", options, "start")
    return private


def fence_alone(source: PgInstance, name: str) -> int:
    """The fence of a method that reads the source after it (`dump`): the clean stop of
    `cutover.fence_source`, then the source alone on its private socket, read-only. Returns
    the final position; rerunnable (read back from its mark)."""
    private = _start_private_dir(source)
    mark = private / f"{name}.final_lsn"
    if mark.exists():
        final = parse_lsn(mark.read_text(encoding="utf-8").strip())
    else:
        final = fence_source(source).final_lsn
        mark.write_text(format_lsn(final) + "\n", encoding="utf-8")
    _start_private(source)
    return final


def unfence_alone(source: PgInstance, target: PgInstance | None, name: str) -> None:
    """Abort of `fence_alone`'s method: the source as it was, the target stopped (kept)."""
    _stop_private(source)
    if not source.is_running() or source.value(f"SHOW {FENCE_SETTING}") == "on":
        unfence_source(source)
    (fenced(source).socket_dir / f"{name}.final_lsn").unlink(missing_ok=True)
    if target is not None and target.is_running():
        target.pg_ctl("stop", "-m", "fast")


def _start_private_dir(instance: PgInstance) -> Path:
    path = fenced(instance).socket_dir
    path.mkdir(mode=0o700, exist_ok=True)
    chown_to(path, instance.user)
    return path


def roll_back(source: PgInstance, target: PgInstance, dbname: str, back: str) -> int:
    """After the point of no return, the second switchover: the target fenced as the source
    was (a clean stop, then alone on its private socket), the source's subscription past the
    target's final position, every sequence set past the target's, the subscription dropped,
    the target stopped (its directory kept), and the source opened as it was. Returns the
    source's position when it serves again. Rerunnable: each part finds what a run did."""
    old = writable(fenced(source))
    if old.is_running() and _subscription_exists(old, dbname, back):
        mark = fenced(target).socket_dir / f"{back}.final_lsn"
        if mark.exists():
            final = parse_lsn(mark.read_text(encoding="utf-8").strip())
        else:
            final = fence_source(target).final_lsn
            _start_private_dir(target)
            mark.write_text(format_lsn(final) + "\n", encoding="utf-8")
        private_target = _start_private(target)
        _rows(
            old,
            dbname,
            "ALTER SUBSCRIPTION :\"name\" CONNECTION :'conninfo'",
            {
                "name": back,
                "conninfo": _conninfo(private_target, dbname),
            },
        )
        wait_caught_up(old, dbname, back, final, timeout=300)
        copy_sequences(private_target, old, dbname)
        _rows(old, dbname, 'DROP SUBSCRIPTION :"name"', {"name": back})
        with contextlib.suppress(MigrationStepError):
            _rows(private_target, dbname, 'DROP PUBLICATION IF EXISTS :"name"', {"name": back})
        private_target.pg_ctl("stop", "-m", "fast")
        mark.unlink(missing_ok=True)
    _stop_private(source)
    if not source.is_running() or source.value(f"SHOW {FENCE_SETTING}") == "on":
        unfence_source(source)
    with contextlib.suppress(MigrationStepError):
        _rows(
            source,
            dbname,
            'DROP PUBLICATION IF EXISTS :"name"',
            {"name": back.removesuffix("_back")},
        )
    return parse_lsn(source.value("SELECT pg_current_wal_lsn()"))
