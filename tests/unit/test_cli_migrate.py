"""`tidemark migrate`: flags become a checked `RequestMigration` (or a usage error naming the
flag), the planner's status and advice read as tables, and a control command finds its one
migration or says why it cannot."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from schemas import DatabaseRef, Engine, Lsn, envelope, uuid7
from schemas.messages import (
    AdviceConstraints,
    AdviceRequest,
    ConnectionEndpoint,
    CutoverMigration,
    CutoverStep,
    Failure,
    MigrationFacts,
    MigrationFailed,
    MigrationMethod,
    MigrationPhase,
    MigrationPhaseChanged,
    MigrationProgress,
    MigrationRolledBack,
    MigrationStatusReply,
    MigrationView,
    PhaseVisit,
    RequestRejected,
)
from services.cli import migratecmds as mc
from services.cli.main import app
from services.cli.stackcmds import console
from services.planner.advisor import advise
from services.planner.client import PlannerError

pytestmark = pytest.mark.unit

NOWHERE = "nats://127.0.0.1:1"
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
GIB = 1 << 30
PLAN = ["migrate", "plan", "orders-db", "--to", "orders-db-new", "--node", "db-node-2"]


def args(**changes: Any) -> mc.MigrationArgs:
    base: dict[str, Any] = {
        "to": "orders-db-new",
        "node": "db-node-2",
        "method": MigrationMethod.PHYSICAL_STREAM,
    }
    return mc.MigrationArgs(**{**base, **changes})


def refusal(**changes: Any) -> str:
    with pytest.raises(typer.BadParameter) as refused:
        mc.build_request(args(**changes))
    return str(refused.value)


def invoke(*argv: str) -> Any:
    return CliRunner().invoke(app, list(argv), env={"COLUMNS": "200"})


def view(**changes: Any) -> MigrationView:
    base: dict[str, Any] = {
        "migration_id": uuid7(),
        "source": "orders-db",
        "target": "orders-db-new",
        "method": MigrationMethod.PHYSICAL_STREAM,
        "phase": MigrationPhase.CATCHING_UP,
        "downtime_budget_s": 30.0,
        "requested_at": T0,
        "updated_at": T0 + timedelta(minutes=5),
    }
    return MigrationView(**{**base, **changes})


def printed(render: Any, *a: Any, **kw: Any) -> str:
    width = console.width
    console.width = 200
    try:
        with console.capture() as captured:
            render(*a, **kw)
    finally:
        console.width = width
    return captured.get()


# --- durations, sizes, windows ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), ("90", 90)],
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert mc.parse_duration(text, "--lag-hold") == seconds


@pytest.mark.parametrize("text", ["5x", "", "-5", "nan", "inf", "1h 30m", "m5", "5 minutes"])
def test_a_bad_duration_names_its_flag_and_the_form_wanted(text: str) -> None:
    with pytest.raises(typer.BadParameter) as refused:
        mc.parse_duration(text, "--downtime-budget")
    assert f"--downtime-budget {text!r} is not a duration" in str(refused.value)


def test_sizes_in_binary_and_decimal_units_and_rates_per_second() -> None:
    assert mc.parse_size("16MiB", "--lag-max-bytes") == 16 << 20
    assert mc.parse_size("2G", "--size") == 2 << 30
    assert mc.parse_size("500GB", "--size") == 500 * 10**9
    assert mc.parse_size("100MiB/s", "--bandwidth") == 100 << 20
    assert mc.parse_size("1048576", "--size") == 1 << 20
    with pytest.raises(typer.BadParameter, match="--lag-max-bytes '16 furlongs'"):
        mc.parse_size("16 furlongs", "--lag-max-bytes")


def test_a_window_is_start_slash_end_or_start_plus_a_length() -> None:
    both = mc.parse_window("2026-12-08T01:00Z/2026-12-08T03:00Z")
    plus = mc.parse_window("2026-12-08T01:00Z+2h")
    assert both == plus
    assert both.start == datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
    # A time's own offset is not the window's length.
    shifted = mc.parse_window("2026-12-08T02:00+01:00+30m")
    assert (shifted.start, shifted.end - shifted.start) == (both.start, timedelta(minutes=30))
    # A time without a zone is UTC.
    assert mc.parse_window("2026-12-08T01:00/2026-12-08T03:00") == both


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2026-12-08T03:00Z/2026-12-08T01:00Z", "before it starts"),
        ("2026-12-08T01:00Z", "START/END or START+DURATION"),
        ("2026-12-08T01:00+01:00", "START/END or START+DURATION"),
        ("tonight/2026-12-08T01:00Z", "'tonight' is not a time"),
        ("2026-12-08T01:00Z+2x", "not a duration"),
        ("2026-12-01T00:00Z+8d", "at most 7 days"),
    ],
)
def test_a_bad_window_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(typer.BadParameter, match="--window") as refused:
        mc.parse_window(text)
    assert says in str(refused.value)


# --- flags → RequestMigration -----------------------------------------------------------------


def test_the_flags_become_the_request_the_planner_will_check() -> None:
    request = mc.build_request(
        args(
            data_dir="/var/lib/postgresql/orders-new",
            port=5433,
            windows=["2026-12-08T01:00Z+2h"],
            downtime_budget="30s",
            lag_max_bytes="16MiB",
            lag_max_seconds="2s",
            lag_hold="2m",
            pause_after="catching_up",
            participants=["weblogic-orders"],
            ack_timeout="10m",
        )
    )
    target = request.target_instance
    assert (target.database.uid, target.database.engine, target.node, target.port) == (
        "orders-db-new",
        Engine.POSTGRES,
        "db-node-2",
        5433,
    )
    assert target.data_dir == "/var/lib/postgresql/orders-new"
    assert request.downtime_budget_s == 30.0
    assert (request.lag.max_bytes, request.lag.max_seconds, request.lag.hold_s) == (
        16 << 20,
        2.0,
        120.0,
    )
    assert request.pause_after is MigrationPhase.CATCHING_UP
    assert request.windows[0].end - request.windows[0].start == timedelta(hours=2)
    assert request.participants == ["weblogic-orders"]
    assert request.options == {}
    assert request.ack_timeout_s == 600.0


def test_a_logical_method_takes_its_options() -> None:
    request = mc.build_request(
        args(method=MigrationMethod.DUMP, options=["database=shop", "jobs=4"])
    )
    assert request.options == {"database": "shop", "jobs": "4"}


def test_without_a_lag_budget_the_gate_is_half_the_downtime_budget() -> None:
    request = mc.build_request(args(downtime_budget="1m"))
    assert (request.lag.max_seconds, request.lag.max_bytes) == (30.0, None)
    assert request.pause_after is MigrationPhase.READY


def test_pause_after_never_is_no_pause_point() -> None:
    assert mc.build_request(args(pause_after="never")).pause_after is None


def test_an_id_given_is_the_id_sent_so_a_retry_is_the_same_request() -> None:
    chosen = uuid.uuid4()
    assert mc.build_request(args(migration_id=str(chosen))).migration_id == chosen
    assert "is not a migration id" in refusal(migration_id="nope")


def test_the_target_engine_is_the_methods_engine() -> None:
    request = mc.build_request(args(method=MigrationMethod.DATAGUARD))
    assert request.target_instance.database.engine is Engine.ORACLE


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"lag_max_seconds": "1m", "downtime_budget": "30s"}, "exceeds the downtime budget"),
        ({"lag_max_bytes": "lots"}, "--lag-max-bytes 'lots' is not an amount of bytes"),
        ({"lag_hold": "2 days"}, "--lag-hold '2 days' is not a duration"),
        ({"lag_hold": "2d"}, "--lag-hold: Input should be less than or equal to 86400"),
        ({"downtime_budget": "0s"}, "--downtime-budget: Input should be greater than 0"),
        ({"data_dir": "relative/dir"}, "must be absolute (on db-node-2)"),
        ({"port": 70000}, "--port: Input should be less than or equal to 65535"),
        ({"node": "Not A Node"}, "--node: String should match pattern"),
        ({"pause_after": "lunch"}, "--pause-after 'lunch' is not a phase"),
        ({"pause_after": "completed"}, "cannot pause after completed: it is terminal"),
        ({"participants": ["a", "a"]}, "participants are named once each"),
        ({"participants": ["Bad Name"]}, "--participant: String should match pattern"),
        ({"options": ["novalue"]}, "--option 'novalue': give it as name=value"),
        ({"options": ["Bad=1"]}, "--option"),
        ({"options": ["a=1", "a=2"]}, "--option a is given twice"),
        ({"options": ["slot_name=x"]}, "method 'physical-stream' has no option slot_name"),
        (
            {"method": MigrationMethod.DUMP, "options": ["jobs=99"]},
            "option jobs is a number of parallel jobs, 1 to 32, not '99'",
        ),
        (
            {"windows": ["2026-12-08T01:00Z+2h", "2026-12-08T02:00Z+2h"]},
            "cutover windows overlap at 2026-12-08T02:00:00Z",
        ),
    ],
)
def test_a_bad_request_is_refused_naming_the_flag(changes: dict[str, Any], says: str) -> None:
    assert says in refusal(**changes)


def test_what_the_planner_would_refuse_at_intake_is_refused_before_sending() -> None:
    request = mc.build_request(args())
    with pytest.raises(typer.BadParameter, match="TM-MIG-SAME"):
        mc.check_locally(request, "orders-db-new")
    oracle = DatabaseRef(uid="orders-db", engine=Engine.ORACLE, name="ORDERS")
    with pytest.raises(typer.BadParameter, match="TM-MIG-ENGINE"):
        mc.check_locally(request, oracle)
    past = mc.build_request(args(windows=["2026-01-01T00:00Z+1h"]))
    with pytest.raises(typer.BadParameter, match="TM-MIG-WINDOW"):
        mc.check_locally(past, "orders-db", now=T0)
    mc.check_locally(request, "orders-db", now=T0)


def test_plan_prints_the_request_and_sends_nothing() -> None:
    shown = invoke(*PLAN, "--method", "physical-stream", "--window", "2026-12-08T01:00Z+2h")
    assert shown.exit_code == 0, shown.output
    assert "tm.cmd.planner.any.migration.request.orders-db.orders-db-new" in shown.output
    assert "nothing was sent" in shown.output
    document = json.loads(invoke(*PLAN, "--method", "dump", "-o", "json").output)
    assert document["subject"].endswith(".orders-db.orders-db-new")
    assert document["request"]["method"] == "dump"
    assert document["request"]["lag"]["max_seconds"] == 30.0


def test_plan_refuses_bad_input_with_a_usage_error() -> None:
    refused = invoke(*PLAN, "--method", "physical-stream", "--downtime-budget", "soon")
    assert refused.exit_code == 2
    assert "--downtime-budget 'soon' is not a duration" in refused.output
    unknown = invoke(*PLAN, "--method", "teleport")
    assert unknown.exit_code == 2


def test_start_checks_its_input_before_it_connects() -> None:
    refused = invoke(
        "migrate",
        "start",
        "orders-db",
        "--to",
        "orders-db",
        "--node",
        "n1",
        "--method",
        "dump",
        "--nats-url",
        NOWHERE,
    )
    assert refused.exit_code == 2
    assert "TM-MIG-SAME" in refused.output
    assert "cannot reach NATS" not in refused.output


# --- choosing the migration a control command is for ------------------------------------------


def test_the_single_unfinished_migration_of_the_source_is_chosen() -> None:
    running = view()
    done = view(phase=MigrationPhase.COMPLETED)
    other = view(source="billing-db")
    assert mc.choose_migration([done, running, other], "orders-db", None) is running


def test_no_unfinished_migration_is_an_error_saying_so() -> None:
    with pytest.raises(mc.NoSingleMigration, match="orders-db has no unfinished migration"):
        mc.choose_migration([], "orders-db", None)
    with pytest.raises(mc.NoSingleMigration, match=r"\(1 finished; name one with --id\)"):
        mc.choose_migration([view(phase=MigrationPhase.ABORTED)], "orders-db", None)


def test_several_unfinished_migrations_are_listed_and_one_must_be_named() -> None:
    a, b = view(), view(target="orders-db-b", phase=MigrationPhase.READY)
    with pytest.raises(mc.NoSingleMigration) as several:
        mc.choose_migration([a, b], "orders-db", None)
    assert "2 unfinished migrations" in str(several.value)
    assert str(a.migration_id) in str(several.value)
    assert "name one with --id" in str(several.value)
    assert mc.choose_migration([a, b], "orders-db", b.migration_id) is b


def test_an_id_of_another_source_or_of_nothing_is_refused() -> None:
    theirs = view(source="billing-db")
    with pytest.raises(mc.NoSingleMigration, match="is of billing-db, not of orders-db"):
        mc.choose_migration([theirs], "orders-db", theirs.migration_id)
    with pytest.raises(mc.NoSingleMigration, match="is known to the planner"):
        mc.choose_migration([], "orders-db", uuid7())


def test_a_completed_migration_is_never_chosen_for_a_control_command() -> None:
    old = view(phase=MigrationPhase.COMPLETED, requested_at=T0 - timedelta(days=30))
    new = view(phase=MigrationPhase.COMPLETED, point_of_no_return_passed=True)
    with pytest.raises(mc.NoSingleMigration, match="2 finished; name one with --id"):
        mc.choose_migration([old, new], "orders-db", None, take_completed=True)


def test_abort_and_rollback_name_what_they_will_do() -> None:
    running = view()
    assert "keeps serving" in mc.consequence("abort", running)
    past = view(phase=MigrationPhase.COMPLETED, point_of_no_return_passed=True)
    assert "the planner will refuse it" in mc.consequence("abort", past)
    assert "new commits are kept" in mc.consequence("rollback", past)
    dumped = view(method=MigrationMethod.DUMP, phase=MigrationPhase.COMPLETED)
    assert "the planner will refuse it" in mc.consequence("rollback", dumped)


@pytest.mark.parametrize("command", ["abort", "rollback"])
def test_abort_and_rollback_without_a_terminal_need_yes_and_send_nothing(command: str) -> None:
    refused = invoke("migrate", command, "orders-db", "--nats-url", NOWHERE)
    assert refused.exit_code == 1
    assert "add --yes" in refused.output
    assert "cannot reach NATS" not in refused.output


def test_only_the_planners_events_confirm_a_control_command() -> None:
    ref = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders")
    resume = mc.CONTROLS["resume"]
    report = MigrationPhaseChanged(
        migration_id=uuid7(), target="orders-db-new", phase=MigrationPhase.CATCHING_UP
    )
    assert not mc.confirms(
        envelope(report, source="executor@db-node-2", database=ref), resume, uuid7()
    )
    assert mc.confirms(envelope(report, source="planner@p1", database=ref), resume, uuid7())


def test_a_cutover_is_confirmed_by_its_steps_or_by_an_event_it_caused() -> None:
    ref = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders")
    cutover = mc.CONTROLS["cutover"]
    ids = {"migration_id": uuid7(), "target": "orders-db-new"}
    command = envelope(CutoverMigration(**ids), source="cli@local", database=ref)
    unpaused = MigrationPhaseChanged(**ids, phase=MigrationPhase.READY, message="waiting")
    stale = envelope(unpaused, source="planner@p1", database=ref)
    caused = envelope(unpaused, source="planner@p1", causation=command)
    drain = MigrationPhaseChanged(**ids, phase=MigrationPhase.CUTTING_OVER, step=CutoverStep.DRAIN)
    assert not mc.confirms(stale, cutover, command.id)
    assert mc.confirms(caused, cutover, command.id)
    assert mc.confirms(envelope(drain, source="planner@p1", database=ref), cutover, command.id)


def test_a_rollback_confirmed_is_success_and_a_timeout_is_not() -> None:
    v = view(phase=MigrationPhase.COMPLETED, point_of_no_return_passed=True)
    ref = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders")
    back = MigrationRolledBack(
        migration_id=v.migration_id,
        target=v.target,
        source_position=Lsn.parse("16/B4000060"),
        target_following=True,
        endpoint=ConnectionEndpoint(host="orders.db.svc", port=15432, database="orders"),
    )
    seen = mc.Followed([envelope(back, source="planner@p1", database=ref)], ended=True)
    code, said = mc._control_outcome("rollback", mc.CONTROLS["rollback"], seen, v, 60.0)
    assert code == 0
    assert "orders-db is the primary again at 16/B4000060" in said
    code, said = mc._control_outcome("pause", mc.CONTROLS["pause"], mc.Followed([], False), v, 60)
    assert code == 1
    assert "no event confirmed it within 1m" in said


def test_a_failure_while_following_ends_with_its_reason_and_whether_the_source_serves() -> None:
    failed = MigrationFailed(
        migration_id=uuid7(),
        target="orders-db-new",
        phase=MigrationPhase.CUTTING_OVER,
        point_of_no_return_passed=False,
        source_serving=True,
        failure=Failure(reason="positions differ after the final sync", code="TM-MIG-PARITY"),
    )
    said = mc.ending(failed, "orders-db")
    assert said is not None
    assert said[0] == 1
    assert "positions differ" in said[1]
    assert "(TM-MIG-PARITY)" in said[1]
    assert "The source orders-db serves" in said[1]


# --- what is shown -----------------------------------------------------------------------------


def test_a_progress_line_has_bytes_rate_lag_and_eta() -> None:
    progress = MigrationProgress(
        bytes_copied=GIB, bytes_total=4 * GIB, lag_bytes=12 << 20, lag_seconds=3.2, eta_ready_s=300
    )
    assert (
        mc.progress_detail(progress, elapsed_s=10.0)
        == "1.0 GiB / 4.0 GiB, 102.4 MiB/s, ETA 0:30, lag 12.0 MiB / 3.2s, ready in ~5m"
    )
    assert mc.progress_detail(MigrationProgress(lag_seconds=0.5), 1.0) == "lag 0.5s"
    assert mc.progress_detail(MigrationProgress(), 1.0) == ""


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(30, "30s"), (0.25, "0.25s"), (300, "5m"), (750, "12m30s"), (11100, "3h05m"), (2e5, "2d07h")],
)
def test_spans_read_like_the_flags_take_them(seconds: float, shown: str) -> None:
    assert mc.span(seconds) == shown


def test_one_migration_shows_its_history_wait_lag_and_downtime_against_budget() -> None:
    window = mc.parse_window("2026-12-08T01:00Z+2h")
    one = view(
        phase=MigrationPhase.READY,
        paused=True,
        waiting="a cutover command or the window at 2026-12-08T01:00:00Z",
        progress=MigrationProgress(bytes_copied=4 * GIB, bytes_total=4 * GIB, lag_bytes=1 << 20),
        downtime_estimate_s=45.0,
        windows=[window],
        history=[
            PhaseVisit(phase=MigrationPhase.VALIDATING, at=T0),
            PhaseVisit(phase=MigrationPhase.COPYING, at=T0 + timedelta(minutes=1)),
            PhaseVisit(
                phase=MigrationPhase.READY, at=T0 + timedelta(hours=1), message="lag held 60s"
            ),
        ],
    )
    shown = printed(mc.render_migration, one, now=T0)
    assert "ready (paused)" in shown
    assert "waiting for:         a cutover command or the window" in shown
    assert "4.0 GiB / 4.0 GiB" in shown
    assert "lag:                 1.0 MiB" in shown
    assert "estimate 45s, budget 30s: OVER budget" in shown
    assert "2026-12-08T01:00:00Z → 2026-12-08T03:00:00Z (2h00m) (next)" in shown
    assert "lag held 60s" in shown
    assert shown.index("validating") < shown.index("copying") < shown.index("lag held")


def test_the_table_has_a_row_per_migration() -> None:
    reply = MigrationStatusReply(
        migrations=[
            view(progress=MigrationProgress(lag_bytes=2 << 20, lag_seconds=1.5)),
            view(source="billing-db", target="billing-db-new", phase=MigrationPhase.COPYING),
        ]
    )
    shown = printed(mc.render_migrations, reply)
    assert "orders-db → orders-db-new" in shown
    assert "billing-db → billing-db-new" in shown
    assert "2.0 MiB, 1.5s" in shown


def test_advice_ranks_the_methods_that_fit_and_says_why_the_others_do_not() -> None:
    facts = MigrationFacts(
        engine=Engine.POSTGRES,
        source_version=15,
        target_version=16,
        size_bytes=500 * GIB,
        write_rate_bytes_s=2 << 20,
        bandwidth_bytes_s=100 << 20,
        source_charset="UTF8",
        target_charset="UTF8",
    )
    advice = advise(
        AdviceRequest(facts=facts, constraints=AdviceConstraints(downtime_budget_s=300))
    )
    shown = printed(mc.render_advice, "orders-db", facts, advice)
    assert "postgres 15 → 16, 500.0 GiB" in shown
    assert "logical-upgrade" in shown.split("ruled out:")[0]
    assert "physical-stream: a physical copy keeps the release" in shown


# --- the answer to a request and the events beside it -----------------------------------------


async def test_a_rejection_ends_the_wait_and_silence_means_no_planner() -> None:
    rejected = RequestRejected(
        command_id=uuid7(), command_type="migration.request", reason="no", code="TM-MIG-SAME"
    )

    async def answer(value: Any, after: float) -> Any:
        await asyncio.sleep(after)
        return value

    never = asyncio.create_task(answer(None, 60))
    got, followed = await mc.answer_and_follow(
        asyncio.create_task(answer(rejected, 0)), never, [], quiet_s=5, text=False
    )
    never.cancel()
    assert (got, followed) == (rejected, None)
    silent = [asyncio.create_task(answer(None, 60)) for _ in range(2)]
    with pytest.raises(PlannerError, match="is the planner running"):
        await mc.answer_and_follow(silent[0], silent[1], [], quiet_s=0.05, text=False)
    for task in silent:
        task.cancel()
