"""A database is declared once (`[[databases]]`); the executor and the archiver read their
views of that one declaration, and an old settings file is still read, with a warning."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import Engine
from services.settings import Settings, databases
from services.settings.databases import LEGACY_LISTS_WARNING

pytestmark = pytest.mark.unit

DECLARED = """
node = "db-node-1"

[[databases]]
uid = "orders-db"
engine = "postgres"
name = "orders"
system_id = 7312001234567890123

[databases.postgres]
data_dir = "/var/lib/postgresql/16/main"
port = 5433
os_user = "postgres"
spool_dir = "/var/lib/tidemark/spool/orders-db"
pg_wal_dir = "/var/lib/postgresql/16/main/pg_wal"

[[databases]]
uid = "erp-prod"
engine = "oracle"
name = "ERPPROD"
system_id = 1234567890
node = "db-node-1"

[databases.oracle]
oracle_home = "/u01/app/oracle/product/19.0.0/dbhome_1"
oracle_sid = "ERPPROD"
staging_dir = "/var/lib/tidemark/oracle-stage/erp-prod"
dsn = "erp-db:1521/ERPPROD"
user = "C##TIDEMARK"
password_file = "/var/run/secrets/tidemark/erp-prod"
archive_dest_id = 2

[[databases]]
uid = "sales-db"
engine = "postgres"
name = "sales"
system_id = 42
node = "db-node-2"

[databases.postgres]
data_dir = "/var/lib/postgresql/16/sales"
spool_dir = "/var/lib/tidemark/spool/sales-db"
"""


def load(text: str) -> Settings:
    return Settings.model_validate(tomllib.loads(text))


def test_the_executor_and_the_archiver_read_the_same_declaration() -> None:
    settings = load(DECLARED)
    hosted = {d.uid: d for d in settings.executor.databases}
    archived = {d.uid: d for d in settings.archiver.databases}
    assert set(hosted) == set(archived) == {"orders-db", "erp-prod"}
    for uid in hosted:
        assert hosted[uid].ref == archived[uid].ref
    orders = hosted["orders-db"].postgres
    assert orders is not None
    assert (orders.data_dir, orders.port) == (Path("/var/lib/postgresql/16/main"), 5433)
    assert archived["orders-db"].spool_dir == Path("/var/lib/tidemark/spool/orders-db")
    assert archived["orders-db"].pg_wal_dir == Path("/var/lib/postgresql/16/main/pg_wal")
    erp = hosted["erp-prod"].oracle
    assert erp is not None
    assert erp.oracle_sid == "ERPPROD"
    session = archived["erp-prod"].oracle
    assert session is not None
    assert session.dsn == erp.dsn == "erp-db:1521/ERPPROD"
    assert archived["erp-prod"].archive_dest_id == 2
    assert hosted["erp-prod"].engine is Engine.ORACLE


def test_a_node_serves_only_the_databases_declared_for_it_or_for_any_node() -> None:
    other = load(DECLARED.replace('node = "db-node-1"\n', 'node = "db-node-2"\n', 1))
    assert {d.uid for d in other.executor.databases} == {"orders-db", "sales-db"}
    assert {d.uid for d in other.archiver.databases} == {"orders-db", "sales-db"}


def test_a_database_declared_twice_is_refused() -> None:
    again = (
        '\n[[databases]]\nuid = "orders-db"\nengine = "postgres"\nname = "other"\n'
        'system_id = 1\n[databases.postgres]\ndata_dir = "/d"\nspool_dir = "/s"\n'
    )
    with pytest.raises(ValidationError, match="declares a database uid twice"):
        load(DECLARED + again)


def test_an_engine_section_must_match_the_engine() -> None:
    wrong = DECLARED.replace('engine = "oracle"', 'engine = "postgres"', 1)
    with pytest.raises(ValidationError, match=r"needs \[databases.postgres\]"):
        load(wrong)


OLD_FORM = """
[[archiver.databases]]
uid = "orders-db"
engine = "postgres"
name = "orders"
system_id = 7312001234567890123
spool_dir = "/var/lib/tidemark/spool/orders-db"

[[executor.databases]]
uid = "orders-db"
engine = "postgres"
name = "orders"

[executor.databases.postgres]
data_dir = "/var/lib/postgresql/16/main"
"""


def test_an_old_settings_file_is_read_as_before_and_told_how_to_move() -> None:
    with pytest.warns(FutureWarning) as caught:
        settings = load(OLD_FORM)
    assert [str(w.message) for w in caught] == [LEGACY_LISTS_WARNING]
    assert "[[databases]]" in LEGACY_LISTS_WARNING
    assert [d.uid for d in settings.archiver.databases] == ["orders-db"]
    assert [d.uid for d in settings.executor.databases] == ["orders-db"]


def test_both_forms_at_once_are_refused_rather_than_merged() -> None:
    with pytest.raises(ValidationError, match="declare each database once"):
        load(DECLARED + OLD_FORM)


def test_the_documented_example_loads() -> None:
    doc = databases.__doc__ or ""
    example = doc.split("\n\n", 1)[1].split("\nFrom the environment", 1)[0]
    settings = load("\n".join(line.removeprefix("    ") for line in example.splitlines()))
    assert {d.uid for d in settings.databases} == {"orders-db", "erp-prod"}
