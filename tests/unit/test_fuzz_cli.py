"""The CLI under hostile arguments: `restore`, `check`, `backup` and `policy set`.

A value the contract refuses is a usage error — exit 2, a message saying what is wrong — before
anything is sent. Every run points at a NATS URL where nothing listens, so a command that got
as far as connecting says "cannot reach NATS" and exits 1: that is how these tests tell a value
refused up front from one that went out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from typer.testing import CliRunner

from schemas import DatabaseUid
from schemas.messages.policies import CronExpr
from services.cli.main import app
from services.planner.cron import CronError, CronSchedule
from tests.fuzzing import settings_for, strings

pytestmark = pytest.mark.unit

NOWHERE = "nats://127.0.0.1:1"
CLI_FUZZ = settings_for(40)
UID = TypeAdapter(DatabaseUid)
CRON = TypeAdapter(CronExpr)


def run(*args: str) -> Any:
    result = CliRunner().invoke(
        app, [*args, "--nats-url", NOWHERE, "--state-dir", "/nonexistent/tidemark-state"]
    )
    # A crash shows as the exception itself; a clean exit (typer.Exit, usage error) as SystemExit.
    if result.exit_code != 0 and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"tidemark {args!r} crashed: {result.output}") from result.exception
    return result


def refused_up_front(*args: str) -> str:
    result = run(*args)
    assert "cannot reach NATS" not in result.output, f"tidemark {args!r} tried to connect"
    assert result.exit_code == 2, (args, result.exit_code, result.output)
    assert "Invalid value" in result.output or "Error" in result.output, result.output
    return str(result.output)


def is_uid(value: str) -> bool:
    try:
        UID.validate_python(value)
    except ValidationError:
        return False
    return True


def is_cron(value: str) -> bool:
    try:
        CronSchedule.parse(CRON.validate_python(value))
    except (ValidationError, CronError):
        return False
    return True


# -- restore targets -----------------------------------------------------------------------------

# The attacks worth naming; the fuzzed tests below draw from all of them.
NAMED = [
    "'; DROP TABLE x; --",
    '"',
    "$(rm -rf /)",
    "`id`",
    "x\narchive_command = 'rm -rf /'",
    "x\x00y",
    "../../etc/passwd",
    "%2e%2e/",
    "\uff0e\uff0e/etc",
    "orders\u202edb",
    "orders.>",
    "x" * 5000,
]
NOT_TIMES = [*NAMED, "2026-02-30T12:00:00Z", "2026-01-31T25:00Z", "now", "1e999"]


@pytest.mark.parametrize("command", ["restore", "check"])
@pytest.mark.parametrize("value", NOT_TIMES)
def test_a_time_that_is_not_one_is_a_usage_error(command: str, value: str) -> None:
    refused_up_front(command, "orders", "--to", value)


@pytest.mark.parametrize("command", ["restore", "check"])
@pytest.mark.parametrize("value", [*NAMED, "16/", "/16", "G/0", "1/2/3", "100000000/0", "-1/0"])
def test_an_lsn_that_is_not_one_is_a_usage_error(command: str, value: str) -> None:
    refused_up_front(command, "orders", "--lsn", value)


@pytest.mark.parametrize("command", ["restore", "check"])
@pytest.mark.parametrize("value", ["-1", "1e3", "0x10", "1.5", "'; DROP TABLE x; --", "$(id)"])
def test_an_scn_that_is_not_one_is_a_usage_error(command: str, value: str) -> None:
    refused_up_front(command, "orders", "--scn", value)


@pytest.mark.parametrize("command", ["restore", "check"])
def test_more_than_one_target_is_a_usage_error(command: str) -> None:
    refused_up_front(command, "orders", "--scn", "5", "--to", "2026-01-31T12:00:00Z")


@pytest.mark.parametrize("command", ["restore", "check"])
@pytest.mark.parametrize(
    "args",
    [
        ("--scn", str(2**64)),
        ("--to", "9999-12-31T23:59:59-23:59"),
        ("--to", "0001-01-01T00:00:00+23:59"),
    ],
)
def test_a_target_beyond_the_range_is_a_usage_error(command: str, args: tuple[str, str]) -> None:
    refused_up_front(command, "orders", *args)


@CLI_FUZZ
@given(value=strings())
def test_a_hostile_time_is_refused_or_sent_never_a_crash(value: str) -> None:
    result = run("check", "orders", "--to", value)
    assert result.exit_code in (1, 2)


# -- clones --------------------------------------------------------------------------------------

BAD_DIRS = [
    "/var/lib/pg/../../etc",
    "/tmp/clone; rm -rf /",
    "/tmp/$(rm -rf /)",
    "/tmp/`id`",
    "/tmp/clone\narchive_command='x'",
    "/tmp/clone\x00",
    "/tmp/clone dir",
    "/tmp/'quoted'",
    '/tmp/"quoted"',
    "/tmp/\uff0e\uff0e/etc",
    "/tmp/clone\u202e",
    "/tmp/%2e%2e/etc",
    "/" + "a" * 1100,
]


@pytest.mark.parametrize("into", BAD_DIRS)
def test_a_clone_into_a_hostile_directory_is_a_usage_error(into: str) -> None:
    output = refused_up_front("restore", "orders", "--immediate", "--into", into, "--port", "5433")
    assert "data_dir" in output or "null byte" in output


def test_a_relative_clone_directory_climbing_out_is_a_usage_error(tmp_path: Path) -> None:
    refused_up_front("restore", "orders", "--immediate", "--into", "../../etc", "--port", "5433")


@pytest.mark.parametrize("port", ["0", "65536", "-1", "99999999999999999999", "5432; id"])
def test_a_clone_on_a_bad_port_is_a_usage_error(port: str) -> None:
    refused_up_front("restore", "orders", "--immediate", "--into", "/tmp/clone", "--port", port)


@pytest.mark.parametrize("node", [*NAMED, "", "Node-1", "a" * 64])
def test_a_clone_on_a_hostile_node_is_a_usage_error(node: str) -> None:
    refused_up_front(
        "restore", "orders", "--immediate", "--into", "/tmp/c", "--port", "5433", "--node", node
    )


# -- backups and policies ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["FULL; id", "incremental\n", "'", "level0", ""])
def test_a_hostile_backup_kind_is_a_usage_error(kind: str) -> None:
    refused_up_front("backup", "orders", "--kind", kind)


@pytest.mark.parametrize("option", ["--full-cron", "--incremental-cron", "--verify-cron"])
@pytest.mark.parametrize(
    "value",
    [
        "0 1 * * *; rm -rf /",
        "0 1 * * *\n0 2 * * *",
        "$(id) * * * *",
        "0 1 * * * *",
        "99 99 * * *",
        "'; DROP TABLE policies; --",
        "0 1 * * \x00",
        " ".join(["0"] * 200),
    ],
)
def test_a_hostile_cron_is_a_usage_error(option: str, value: str) -> None:
    refused_up_front("policy", "set", "orders", option, value)


@pytest.mark.parametrize("days", ["nan", "inf", "-inf", "-1", "0", "1e400", "3651", "7; id"])
def test_a_hostile_window_is_a_usage_error(days: str) -> None:
    refused_up_front("policy", "set", "orders", "--window-days", days)


@pytest.mark.parametrize("node", [*NAMED, "", "Node-1", "a" * 64])
def test_a_hostile_policy_node_is_a_usage_error(node: str) -> None:
    refused_up_front("policy", "set", "orders", "--node", node)


@CLI_FUZZ
@given(option=st.sampled_from(["--full-cron", "--verify-cron"]), value=strings())
def test_a_fuzzed_cron_is_refused_before_anything_is_sent(option: str, value: str) -> None:
    assume(value != "never" and not is_cron(value))
    refused_up_front("policy", "set", "orders", option, value)


# -- the database argument -----------------------------------------------------------------------

COMMANDS = [
    ("restore", "{db}", "--immediate"),
    ("check", "{db}", "--scn", "5"),
    ("backup", "{db}"),
    ("policy", "set", "{db}"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("database", ["orders.>", "../../etc/passwd", "'; DROP TABLE x; --"])
def test_a_hostile_database_uid_is_a_usage_error(command: tuple[str, ...], database: str) -> None:
    refused_up_front(*(part.replace("{db}", database) for part in command))


@settings_for(15)  # each one connects (and fails to) until the uid is checked up front
@given(command=st.sampled_from(COMMANDS), database=strings())
def test_a_hostile_database_uid_is_refused_or_sent_never_a_crash(
    command: tuple[str, ...], database: str
) -> None:
    assume(not is_uid(database) and not database.startswith("-"))
    result = run(*(part.replace("{db}", database) for part in command))
    assert result.exit_code in (1, 2)
