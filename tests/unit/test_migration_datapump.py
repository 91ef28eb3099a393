"""The planner runs `datapump`: its row of steps (like `dump`: prepare, no copy, no lag,
parity), its options checked at intake, and a request onto an existing Oracle database
accepted where every other method refuses a target an executor hosts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import DatabaseRef, Engine
from schemas.messages import MigrationMethod, RequestMigration, TargetInstance
from services.planner.errors import Refused
from services.planner.migration_record import METHOD_STEPS, METHODS_BUILT, MethodSteps
from services.planner.migrations import Migrations
from tests.unit.migration_examples import LAG, MIGRATION, T0

pytestmark = pytest.mark.unit

SOURCE = DatabaseRef(uid="ora-src", engine=Engine.ORACLE, name="SALES", system_id=1_234_567_890)
TARGET = DatabaseRef(uid="ora-tgt", engine=Engine.ORACLE, name="SALES19")


def request(method: MigrationMethod = MigrationMethod.DATAPUMP, **options: str) -> RequestMigration:
    return RequestMigration(
        migration_id=MIGRATION,
        target_instance=TargetInstance(database=TARGET, node="ora-node-2"),
        method=method,
        downtime_budget_s=600.0,
        lag=LAG,
        options=options,
    )


def test_datapump_is_a_built_method_with_the_steps_of_dump() -> None:
    assert MigrationMethod.DATAPUMP in METHODS_BUILT
    assert METHOD_STEPS[MigrationMethod.DATAPUMP] == MethodSteps(
        prepare=True, copy=False, lag=False, parity=True, schema_watch=False, builds_target=False
    )


def test_the_options_are_schemas_parallel_and_a_network_link() -> None:
    made = request(schemas="APP,hr", parallel="4", network_link="SRC.EXAMPLE")
    assert made.options["schemas"] == "APP,hr"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"schemas": "APP;DROP"}, "comma list of Oracle names"),
        ({"parallel": "0"}, "1 to 99"),
        ({"parallel": "100"}, "1 to 99"),
        ({"network_link": "a link"}, "database link name"),
        ({"jobs": "2"}, "has no option jobs"),
    ],
)
def test_bad_options_are_refused_at_intake(options: dict[str, str], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        request(**options)


@dataclass
class _Beat:
    node: str


class _Nodes:
    """Both databases hosted: the source on one node, the target (an existing database) on
    another; every node alive."""

    async def hosting(self, uid: str) -> list[_Beat]:
        return [_Beat({SOURCE.uid: "ora-node-1", TARGET.uid: "ora-node-2"}[uid])]

    async def ref(self, uid: str) -> DatabaseRef:
        return SOURCE

    async def is_live(self, node: str) -> bool:
        return True


@dataclass
class _Clock:
    def now(self) -> Any:
        return T0 - timedelta(days=1)


@dataclass
class _Ctx:
    nodes: _Nodes
    clock: _Clock


async def test_the_planner_accepts_datapump_onto_a_database_an_executor_hosts() -> None:
    saga = Migrations(_Ctx(_Nodes(), _Clock()))  # type: ignore[arg-type]
    await saga.check(SOURCE, request(schemas="APP"))


async def test_a_method_that_builds_its_target_is_still_refused_a_hosted_one() -> None:
    assert METHOD_STEPS[MigrationMethod.DUMP].builds_target
    pg_source = SOURCE.model_copy(update={"engine": Engine.POSTGRES})
    pg_target = TARGET.model_copy(update={"engine": Engine.POSTGRES})

    class _PgNodes(_Nodes):
        async def ref(self, uid: str) -> DatabaseRef:
            return pg_source

    dump = RequestMigration(
        migration_id=MIGRATION,
        target_instance=TargetInstance(database=pg_target, node="ora-node-2"),
        method=MigrationMethod.DUMP,
        downtime_budget_s=600.0,
        lag=LAG,
    )
    saga = Migrations(_Ctx(_PgNodes(), _Clock()))  # type: ignore[arg-type]
    with pytest.raises(Refused) as refused:
        await saga.check(pg_source, dump)
    assert "never writes over one" in refused.value.refusal.reason
