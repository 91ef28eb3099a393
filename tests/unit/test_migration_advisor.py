"""The method advisor: one test per rule, ranking, and the docs' table is the code's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import Engine
from schemas.messages import (
    AdviceConstraints,
    AdviceRequest,
    Endianness,
    MigrationFacts,
    MigrationMethod,
    Scope,
)
from schemas.messages.advice import MAX_NAMED_TABLES
from services.planner.advisor import RULES, advise, rules_table
from services.planner.migration_record import METHODS_BUILT

pytestmark = pytest.mark.unit

GIB = 1 << 30
M = MigrationMethod


def facts(**changes: Any) -> MigrationFacts:
    base: dict[str, Any] = {
        "engine": Engine.POSTGRES,
        "source_version": 15,
        "target_version": 15,
        "size_bytes": 100 * GIB,
        "write_rate_bytes_s": 2e6,
        "bandwidth_bytes_s": 200e6,
        "source_charset": "UTF8",
        "target_charset": "UTF8",
    }
    return MigrationFacts(**(base | changes))


def ask(budget: float = 600.0, **changes: Any) -> tuple[list[M], dict[M, list[str]]]:
    scope = changes.pop("scope", Scope.DATABASE)
    window = changes.pop("window_s", None)
    advice = advise(
        AdviceRequest(
            facts=facts(**changes),
            constraints=AdviceConstraints(downtime_budget_s=budget, window_s=window, scope=scope),
        )
    )
    return [a.method for a in advice.ranked], {r.method: r.reasons for r in advice.ruled_out}


def test_same_release_postgres_with_minutes_ranks_streaming_first_then_archive() -> None:
    ranked, out = ask()
    assert ranked[:3] == [M.PHYSICAL_STREAM, M.PHYSICAL_ARCHIVE, M.LOGICAL_UPGRADE]
    assert "exceeds the budget" in out[M.DUMP][0]  # 100 GiB dump+restore is not 10 minutes
    assert not set(ranked) & {M.DATAGUARD, M.RMAN, M.XTTS, M.DATAPUMP}  # another engine's


def test_estimates_are_copy_plus_catch_up_and_the_method_cutover() -> None:
    advice = advise(
        AdviceRequest(
            facts=facts(size_bytes=200_000_000, write_rate_bytes_s=1e6, bandwidth_bytes_s=2e6),
            constraints=AdviceConstraints(downtime_budget_s=600),
        )
    )
    stream = advice.ranked[0]
    assert stream.method is M.PHYSICAL_STREAM
    # 100 s copy; 1e8 bytes written meanwhile, gained on at 1e6 B/s: 100 s more.
    assert stream.estimated_duration_s == pytest.approx(200.0)
    assert stream.estimated_downtime_s == 5.0


def test_a_managed_source_leaves_only_the_logical_methods() -> None:
    ranked, out = ask(budget=3600 * 24, managed_source=True)
    assert set(ranked) == {M.LOGICAL_UPGRADE, M.DUMP}
    assert "managed cloud source" in out[M.PHYSICAL_STREAM][0]
    assert "managed cloud source" in out[M.PHYSICAL_ARCHIVE][0]


def test_a_major_version_jump_rules_out_physical_copies() -> None:
    ranked, out = ask(target_version=17)
    assert ranked[0] is M.LOGICAL_UPGRADE
    assert "keeps the release: source is 15, target 17" in out[M.PHYSICAL_STREAM][0]


def test_a_target_older_than_the_source_rules_out_everything() -> None:
    ranked, out = ask(target_version=14)
    assert ranked == []
    assert any("older than the source" in r for r in out[M.DUMP])


def test_logical_replication_needs_postgres_10() -> None:
    _, out = ask(source_version=9, target_version=15)
    assert "PostgreSQL 10 or later" in " ".join(out[M.LOGICAL_UPGRADE])


def test_an_endian_or_charset_change_rules_out_physical_copies() -> None:
    _, out = ask(target_endianness=Endianness.BIG)
    assert "byte order" in out[M.PHYSICAL_STREAM][0]
    _, out = ask(target_charset="LATIN1")
    assert "character set" in out[M.PHYSICAL_ARCHIVE][0]


def test_writes_faster_than_the_link_never_catch_up() -> None:
    ranked, out = ask(budget=3600 * 24 * 7, write_rate_bytes_s=300e6)
    assert ranked == [M.DUMP]
    assert "never catch up" in out[M.PHYSICAL_STREAM][0]


def test_one_database_of_many_is_not_a_physical_copy_and_a_cluster_is_not_logical() -> None:
    ranked, out = ask(databases_in_cluster=3)
    assert M.PHYSICAL_STREAM in out
    assert "whole cluster" in out[M.PHYSICAL_STREAM][0]
    assert ranked[0] is M.LOGICAL_UPGRADE
    ranked, out = ask(databases_in_cluster=3, scope=Scope.CLUSTER)
    assert ranked[0] is M.PHYSICAL_STREAM
    assert "one database at a time" in out[M.LOGICAL_UPGRADE][0]


def test_a_short_window_rules_out_what_does_not_fit_it() -> None:
    ranked, out = ask(window_s=8.0)
    assert ranked == [M.PHYSICAL_STREAM]
    assert "does not fit the 8 s window" in out[M.PHYSICAL_ARCHIVE][0]


def oracle(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "engine": Engine.ORACLE,
        "source_version": 19,
        "target_version": 19,
        "source_charset": "AL32UTF8",
        "target_charset": "AL32UTF8",
        "size_bytes": 2048 * GIB,
    }
    return base | changes


def test_oracle_same_platform_whole_database_prefers_data_guard() -> None:
    ranked, _ = ask(budget=3600 * 4, **oracle())
    assert ranked[:3] == [M.DATAGUARD, M.RMAN, M.XTTS]


def test_oracle_one_pdb_out_of_a_shared_cdb_or_an_endian_change_is_xtts() -> None:
    ranked, out = ask(budget=3600 * 4, **oracle(multitenant=True, databases_in_cluster=65))
    assert ranked[0] is M.XTTS
    assert "whole CDBs" in out[M.DATAGUARD][0]
    assert "whole CDBs" in out[M.RMAN][0]
    ranked, out = ask(budget=3600 * 4, **oracle(source_endianness=Endianness.BIG))
    assert ranked[0] is M.XTTS
    assert "byte order" in out[M.RMAN][0]


def test_oracle_tde_across_an_endian_change_rules_out_xtts() -> None:
    _, out = ask(budget=3600 * 48, **oracle(source_endianness=Endianness.BIG, encrypted=True))
    assert "same-endian only" in out[M.XTTS][0]


def test_oracle_charset_change_or_managed_source_is_data_pump() -> None:
    ranked, _ = ask(budget=3600 * 48, **oracle(target_charset="UTF8"))
    assert M.DATAGUARD not in ranked
    assert M.DATAPUMP in ranked
    ranked, out = ask(budget=3600 * 48, **oracle(managed_source=True))
    assert ranked == [M.DATAPUMP]
    assert "RMAN access" in out[M.XTTS][0]


def test_every_method_has_one_rule() -> None:
    assert sorted(r.method for r in RULES) == sorted(MigrationMethod)


def test_the_docs_table_is_the_codes_table() -> None:
    text = (Path(__file__).parents[2] / "docs" / "migration.md").read_text(encoding="utf-8")
    text = text.split("## Choosing a method: the advisor", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+)` \| (\w+) \| (.+?) \| (.+?) \|$", text, flags=re.M)
    assert rows == rules_table(), "regenerate the advisor table in docs/migration.md"


# --- what the PostgreSQL logical methods need ---------------------------------------------------


def test_a_major_upgrade_is_ruled_out_of_physical_copies_naming_the_methods_that_upgrade() -> None:
    ranked, out = ask(budget=3600, target_version=18)
    assert ranked == [M.LOGICAL_UPGRADE, M.DUMP]
    for physical in (M.PHYSICAL_STREAM, M.PHYSICAL_ARCHIVE):
        assert out[physical] == [
            "a physical copy keeps the release: source is 15, target 18; a major upgrade "
            "moves by logical-upgrade or dump"
        ]
    _, out = ask(budget=3600 * 48, **oracle(target_version=23))
    assert "a major upgrade moves by xtts or datapump" in out[M.DATAGUARD][0]


def test_a_budget_shorter_than_dump_and_restore_rules_dump_out_with_both_figures() -> None:
    # 100 GiB dumped and restored at 200 MB/s: 2 * 107.4 GB / 200 MB/s = 1074 s, all of it fenced.
    ranked, out = ask(budget=600)
    assert M.DUMP not in ranked
    assert out[M.DUMP] == [
        "estimated downtime 17.9 min (dump + restore: the source is fenced from the dump's "
        "start to the restore's end) exceeds the budget of 10 min"
    ]
    _, out = ask(budget=3600, window_s=900)
    assert out[M.DUMP] == [
        "estimated downtime 17.9 min (dump + restore: the source is fenced from the dump's "
        "start to the restore's end) does not fit the 15 min window"
    ]
    advice = advise(
        AdviceRequest(facts=facts(), constraints=AdviceConstraints(downtime_budget_s=1200))
    )
    dump = next(a for a in advice.ranked if a.method is M.DUMP)
    assert dump.estimated_downtime_s == pytest.approx(2 * 100 * GIB / 200e6)


def test_a_table_without_a_replica_identity_rules_out_logical_upgrade_by_name() -> None:
    ranked, out = ask(budget=3600, target_version=18, tables_without_identity=["public.events"])
    assert ranked == [M.DUMP]
    assert out[M.LOGICAL_UPGRADE] == [
        "logical replication cannot carry the UPDATEs and DELETEs of public.events (no primary "
        "key, no replica identity): fix first (a primary key or REPLICA IDENTITY FULL) or use dump"
    ]
    ranked, _ = ask(tables_without_identity=["public.events"])
    assert ranked[:2] == [M.PHYSICAL_STREAM, M.PHYSICAL_ARCHIVE]  # a physical copy carries it


def test_a_reason_names_five_tables_and_counts_the_rest() -> None:
    tables = [f"public.t{i}" for i in range(7)]
    _, out = ask(tables_without_identity=tables)
    assert (
        "of public.t0, public.t1, public.t2, public.t3, public.t4 and 2 more ("
        in (out[M.LOGICAL_UPGRADE][0])
    )


def test_unlogged_tables_and_large_objects_rule_out_logical_upgrade_and_leave_dump() -> None:
    ranked, out = ask(
        budget=3600, target_version=18, unlogged_tables=['app."Cache"'], large_objects=12
    )
    assert ranked == [M.DUMP]
    assert out[M.LOGICAL_UPGRADE] == [
        'logical replication does not carry unlogged tables (app."Cache"): fix first '
        "(ALTER TABLE ... SET LOGGED) or use dump",
        "logical replication does not carry large objects (12 in the source): fix first "
        "(move them into bytea columns) or use dump",
    ]


def test_an_extension_the_target_lacks_rules_out_every_postgres_method() -> None:
    ranked, out = ask(budget=3600, extensions_missing_on_target=["postgis", "pg_trgm"])
    assert ranked == []
    reason = (
        "the source uses extensions the target does not offer (postgis, pg_trgm): install them "
        "on the target first (every method brings over the schema or the catalog that uses them)"
    )
    for method in (M.PHYSICAL_STREAM, M.PHYSICAL_ARCHIVE, M.LOGICAL_UPGRADE, M.DUMP):
        assert reason in out[method]


@pytest.mark.parametrize("name", ["public.events", 'app."Order Lines"', '"My ""Schema""".t_1'])
def test_a_table_is_named_schema_dot_table_as_postgres_quotes_it(name: str) -> None:
    assert facts(tables_without_identity=[name]).tables_without_identity == [name]


@pytest.mark.parametrize("name", ["events", "public.Events", "a.b.c", 'public."x', " public.t"])
def test_a_table_name_without_its_schema_or_unquoted_as_postgres_would_is_refused(
    name: str,
) -> None:
    with pytest.raises(ValidationError) as refused:
        facts(unlogged_tables=[name])
    assert [e["type"] for e in refused.value.errors()] == ["string_pattern_mismatch"]


def test_the_tables_named_are_bounded() -> None:
    with pytest.raises(ValidationError) as refused:
        facts(tables_without_identity=[f"public.t{i}" for i in range(MAX_NAMED_TABLES + 1)])
    assert [e["type"] for e in refused.value.errors()] == ["too_long"]


# --- Oracle's order of preference (Data Guard, Data Pump, XTTS) --------------------------------


def ranked_advice(budget: float, **changes: Any) -> Any:
    return advise(
        AdviceRequest(
            facts=facts(**oracle(**changes)),
            constraints=AdviceConstraints(downtime_budget_s=budget),
        )
    )


def test_oracle_same_platform_and_release_ranks_data_guard_first_and_says_what_is_built() -> None:
    advice = ranked_advice(
        3600 * 4, source_platform="Linux x86 64-bit", target_platform="linux x86 64-bit"
    )
    assert advice.ranked[0].method is M.DATAGUARD
    built = {a.method: a.built for a in advice.ranked}
    assert built[M.DATAGUARD] is (M.DATAGUARD in METHODS_BUILT)
    assert built[M.XTTS] is (M.XTTS in METHODS_BUILT)


def test_oracle_another_platform_of_the_same_byte_order_rules_out_standby_and_restore() -> None:
    ranked, out = ask(
        budget=3600 * 4,
        **oracle(
            source_platform="Microsoft Windows x86 64-bit", target_platform="Linux x86 64-bit"
        ),
    )
    assert ranked[0] is M.XTTS
    assert "MOS 413484.1" in out[M.DATAGUARD][0]
    assert "MOS 413484.1" in out[M.RMAN][0]


def test_oracle_a_character_set_change_leaves_data_pump_alone() -> None:
    ranked, out = ask(budget=3600 * 48, **oracle(target_charset="WE8MSWIN1252"))
    assert ranked == [M.DATAPUMP]
    assert "transported tablespaces keep the character set" in out[M.XTTS][0]
    assert "keeps the character set" in out[M.RMAN][0]
    ranked, out = ask(
        budget=3600 * 48, **oracle(source_nchar_charset="AL16UTF16", target_nchar_charset="UTF8")
    )
    assert ranked == [M.DATAPUMP]
    assert "ORA-19736" in out[M.XTTS][0]


def test_oracle_a_subset_of_schemas_moves_by_data_pump_only() -> None:
    ranked, out = ask(budget=3600 * 48, **oracle(schemas=["APP", "HR"]))
    assert ranked == [M.DATAPUMP]
    for method in (M.DATAGUARD, M.RMAN, M.XTTS):
        assert "not a subset of schemas (APP, HR)" in " ".join(out[method]), method


def test_oracle_small_data_ranks_data_pump_before_a_standby() -> None:
    ranked, _ = ask(budget=3600, **oracle(size_bytes=10 * GIB, bandwidth_bytes_s=1e9))
    assert ranked[:2] == [M.DATAPUMP, M.DATAGUARD]  # 2 * 10 GiB at 1 GB/s: 21 s against 300 s


def test_oracle_a_version_jump_of_a_large_database_is_xtts() -> None:
    ranked, out = ask(budget=3600 * 4, **oracle(source_version=12, target_version=19))
    assert ranked == [M.XTTS]
    assert "keeps the release" in out[M.DATAGUARD][0]
    assert "exceeds the budget" in out[M.DATAPUMP][0]  # 2 TiB export + import is not 4 hours
    _, out = ask(budget=3600 * 4, **oracle(source_version=10, target_version=19))
    assert "11.2.0.3 or later" in out[M.XTTS][0]


def test_a_known_platform_with_the_other_byte_order_is_refused() -> None:
    with pytest.raises(
        ValidationError, match=re.escape("AIX-Based Systems (64-bit) is big endian")
    ):
        facts(**oracle(source_platform="AIX-Based Systems (64-bit)"))
    # A platform the table does not list is taken with the byte order given.
    facts(**oracle(source_platform="HP-UX IA (64-bit)", source_endianness=Endianness.BIG))


def test_schemas_are_an_oracle_fact_and_oracle_names() -> None:
    with pytest.raises(ValidationError, match="schemas are an Oracle fact"):
        facts(schemas=["APP"])
    with pytest.raises(ValidationError, match="schemas"):
        facts(**oracle(schemas=["APP; DROP"]))
