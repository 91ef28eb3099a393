"""The permissions matrix: its promises, the chart's generated copy, the server config it makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas import COMMANDS, EVENTS, wildcard
from schemas.messages.migrations import MIGRATION_COMMANDS
from schemas.messages.programs import PROGRAM_COMMANDS
from services.bus.permissions import (
    MATRIX,
    SENDS,
    SERVICE_ROLES,
    Role,
    chart_template,
    nats_server_users,
)

pytestmark = pytest.mark.unit

CHART_TEMPLATE = (
    Path(__file__).resolve().parents[2] / "deploy/helm/tidemark/templates/_nats-permissions.tpl"
)


def publishes(role: Role, prefix: str) -> list[str]:
    return [s for s in MATRIX[role].publish_allow if s.startswith(prefix)]


def test_the_charts_copy_is_generated_from_this_one() -> None:
    assert CHART_TEMPLATE.read_text() == chart_template(), (
        "regenerate: python -m services.bus.permissions > deploy/helm/tidemark/templates/"
        "_nats-permissions.tpl"
    )


def test_only_the_planner_commands_an_executor() -> None:
    for role in Role:
        executor_commands = publishes(role, "tm.cmd.executor.")
        assert bool(executor_commands) == (role is Role.PLANNER), role


def test_the_tool_commands_only_the_planner_and_reads_events() -> None:
    assert set(publishes(Role.TOOL, "tm.cmd.")) == {
        "tm.cmd.planner.any.backup",
        "tm.cmd.planner.any.restore",
        "tm.cmd.planner.any.policy",
        "tm.cmd.planner.any.cancel",
        *(wildcard(model) for model in MIGRATION_COMMANDS),
        *(wildcard(model) for model in PROGRAM_COMMANDS),
    }
    assert publishes(Role.TOOL, "tm.evt.") == []
    assert "tm.evt.>" in MATRIX[Role.TOOL].subscribe_allow
    assert "$JS.API.CONSUMER.MSG.NEXT.>" in MATRIX[Role.TOOL].publish_deny


def test_only_the_services_dead_letter_and_write_buckets() -> None:
    for role in Role:
        if role is Role.ADMIN:
            continue
        assert bool(publishes(role, "tm.dlq.")) == (role in SERVICE_ROLES), role
        assert bool(publishes(role, "$KV.")) == (role in SERVICE_ROLES), role
    assert publishes(Role.ARCHIVER, "$KV.") == ["$KV.tm_health.>"]


def test_every_subject_granted_is_one_of_the_contract() -> None:
    known = {wildcard(m) for m in (*COMMANDS, *EVENTS)}
    for role, models in SENDS.items():
        granted = set(publishes(role, "tm.cmd.")) | set(publishes(role, "tm.evt."))
        assert granted == {wildcard(m) for m in models} <= known, role


def test_no_role_but_admin_may_delete_a_stream() -> None:
    for role in Role:
        denied = "$JS.API.STREAM.DELETE.>" in MATRIX[role].publish_deny
        assert denied == (role is not Role.ADMIN), role


def test_the_server_config_names_each_user_with_its_permissions() -> None:
    text = nats_server_users({Role.ARCHIVER: "pw-a", Role.TOOL: "pw-t"})
    entries = [json.loads(line.strip().rstrip(",")) for line in text.splitlines()[2:-2]]
    assert [e["user"] for e in entries] == ["tidemark-archiver", "tidemark-tool"]
    assert entries[0]["password"] == "pw-a"
    assert entries[0]["permissions"] == MATRIX[Role.ARCHIVER].as_config()
    assert "allow_responses" not in entries[0]["permissions"]
    assert MATRIX[Role.CATALOG].as_config()["allow_responses"] is True


def test_no_database_scoped_migration_grant_matches_a_program() -> None:
    """`tm.cmd.planner.any.migration.*.<uid>.*` is how a team is given its own databases'
    migrations: whatever a database or a program is called, it never reaches a program."""
    for uid in ("request", "orders-db"):
        scoped = f"tm.cmd.planner.any.migration.*.{uid}.*".split(".")
        for model in PROGRAM_COMMANDS:
            subject = wildcard(model).replace("*", uid).split(".")
            assert len(subject) != len(scoped) or any(
                want not in ("*", got) for want, got in zip(scoped, subject, strict=True)
            ), model.TYPE
