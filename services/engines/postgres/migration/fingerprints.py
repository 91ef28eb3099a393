"""The parity check, in two halves, so that source and target need not be reachable from the
same node: `fingerprint` reads one database, `compare` says how two fingerprints differ.

    fingerprint   per table its row count and a checksum of its rows, per schema the objects of
                  each kind, and every sequence's value; JSON-serialisable (`to_json` /
                  `from_json`), so it can travel in a dump's manifest
    compare       the differences between a source's and a target's fingerprint, one line each;
                  empty: parity holds

A fingerprint is meaningful as parity evidence only when the database cannot change while it is
read: a fenced source, a target no client has reached yet. Each query reads in its own snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.engines.postgres.migration.instance import MigrationStepError, PgInstance
from services.engines.postgres.migration.logical import USER_SCHEMA, _literal, _rows

# One query per table, generated and run by psql's gexec: name, rows, and the sum of a 64-bit
# hash of each row's text. A sum needs no sort (a sorted md5 aggregate was 6.6 times slower on
# 2M rows, and a cutover waits for it) and counts every row, duplicates too; the hash is the one
# hash partitioning relies on staying the same across releases. The alias is unusual so that
# no column shadows the row.
ROW_CHECKSUM = (
    "SELECT %L, count(*), coalesce(sum(hashtextextended(tm_row_::text, 0)::numeric), 0) "
    "FROM %I.%I tm_row_"
)
TEXT_SETTINGS = """
SET DateStyle = 'ISO, YMD';
SET TimeZone = 'UTC';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 1;
SET bytea_output = 'hex';
"""
"""How a row prints as text must not depend on either server's defaults: both sides are read
with these."""
TABLE_CHECKSUMS_SQL = (
    TEXT_SETTINGS
    + f"""
SELECT format({_literal(ROW_CHECKSUM)}, format('%I.%I', n.nspname, c.relname), n.nspname,
              c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND {USER_SCHEMA}
 ORDER BY 1
\\gexec
"""  # noqa: S608 - constants only
)

OBJECT_COUNTS_SQL = f"""
SELECT n.nspname, 'relkind ' || c.relkind::text, count(*)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMA}
 GROUP BY 1, 2
UNION ALL
SELECT n.nspname, 'prokind ' || p.prokind::text, count(*)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMA}
 GROUP BY 1, 2
UNION ALL
SELECT n.nspname, 'triggers', count(*)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {USER_SCHEMA}
 GROUP BY 1, 2
ORDER BY 1, 2
"""  # noqa: S608 - constants only

SEQUENCE_VALUES_SQL = """
SELECT format('%I.%I', schemaname, sequencename), coalesce(last_value, 0) FROM pg_sequences
"""


@dataclass(frozen=True)
class Fingerprint:
    """What one database holds, as far as parity looks.

    `objects`: schema -> kind (`relkind r`, `prokind f`, `triggers`…) -> how many, user schemas
    only. `tables`: `schema.table` (quoted as `%I.%I`) -> (rows, the sum of each row's 64-bit
    text hash), permanent tables only (unlogged and temporary ones are no one's evidence).
    `sequences`: `schema.sequence` -> `last_value` (0 for a sequence never called).
    """

    objects: Mapping[str, Mapping[str, int]]
    tables: Mapping[str, tuple[int, str]]
    sequences: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": {schema: dict(kinds) for schema, kinds in self.objects.items()},
            "tables": {name: [rows, checksum] for name, (rows, checksum) in self.tables.items()},
            "sequences": dict(self.sequences),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fingerprint:
        try:
            return cls(
                objects={
                    str(schema): {str(kind): int(count) for kind, count in kinds.items()}
                    for schema, kinds in data["objects"].items()
                },
                tables={
                    str(name): (int(rows), str(checksum))
                    for name, (rows, checksum) in data["tables"].items()
                },
                sequences={str(name): int(value) for name, value in data["sequences"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MigrationStepError(f"not a parity fingerprint: {exc!r}") from exc


def fingerprint(instance: PgInstance, dbname: str) -> Fingerprint:
    """Read `dbname`'s fingerprint on `instance`. Reads only; every row of every table is read."""
    objects: dict[str, dict[str, int]] = {}
    for schema, kind, count in _rows(instance, dbname, OBJECT_COUNTS_SQL):
        objects.setdefault(schema, {})[kind] = int(count)
    tables = {
        name: (int(rows), checksum)
        for name, rows, checksum in _rows(instance, dbname, TABLE_CHECKSUMS_SQL)
    }
    sequences = {name: int(value) for name, value in _rows(instance, dbname, SEQUENCE_VALUES_SQL)}
    return Fingerprint(objects=objects, tables=tables, sequences=sequences)


def _table_sum(found: tuple[int, str] | None) -> str:
    return "absent" if found is None else f"{found[0]} rows, checksum {found[1]}"


def compare(source: Fingerprint, target: Fingerprint) -> list[str]:
    """What differs between the source's and the target's fingerprint, one line each, named
    `objects <schema> <kind>`, `table <name>` or `sequence <name>`; empty: parity holds.

    A sequence is a difference when the target's value is behind the source's (or absent): a
    target ahead hands out no value the source has handed out already.
    """
    differences: list[str] = []
    theirs = {(s, k): n for s, kinds in source.objects.items() for k, n in kinds.items()}
    ours = {(s, k): n for s, kinds in target.objects.items() for k, n in kinds.items()}
    for key in sorted(theirs.keys() | ours.keys()):
        if theirs.get(key) != ours.get(key):
            differences.append(
                f"objects {' '.join(key)}: source {theirs.get(key, 'absent')}, "
                f"target {ours.get(key, 'absent')}"
            )
    # Rows: count and checksum as one value, so one mismatch is one line.
    for table in sorted(source.tables.keys() | target.tables.keys()):
        src, tgt = source.tables.get(table), target.tables.get(table)
        if src != tgt:
            differences.append(f"table {table}: source {_table_sum(src)}, target {_table_sum(tgt)}")
    for sequence, value in sorted(source.sequences.items()):
        behind = target.sequences.get(sequence)
        if behind is None or behind < value:
            differences.append(
                f"sequence {sequence}: source {value}, "
                f"target {'absent' if behind is None else behind}"
            )
    return differences


__all__ = ["Fingerprint", "compare", "fingerprint"]
