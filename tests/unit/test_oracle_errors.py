"""The Oracle error table: stacks are decided by their inner codes, never by a wrapper."""

from __future__ import annotations

import pytest

from services.engines.oracle.errors import Verdict, benign_in, classify, codes_in, rule_for

pytestmark = [pytest.mark.unit, pytest.mark.oracle]

STACK = [
    "RMAN-00571: ===========================================================",
    "RMAN-00569: =============== ERROR MESSAGE STACK FOLLOWS ===============",
    "RMAN-00571: ===========================================================",
]


@pytest.mark.parametrize(
    ("inner", "verdict", "code"),
    [
        (
            ["RMAN-03009: failure of backup command on ch1 channel", "ORA-19511: media manager"],
            Verdict.RETRYABLE,
            "ORA-19511",
        ),
        (
            ["RMAN-03009: failure of backup command on ch1 channel", "ORA-01017: invalid"],
            Verdict.FATAL,
            "ORA-01017",
        ),
        (
            [
                "RMAN-03002: failure of recover command",
                "RMAN-06054: media recovery requesting unknown archived log for thread 2",
            ],
            Verdict.FATAL,
            "RMAN-06054",
        ),
        (
            [
                "RMAN-03002: failure of recover command",
                "ORA-01547: warning: RECOVER succeeded",
                "ORA-01194: file 4 needs more recovery",
                "ORA-01110: data file 4: '/u/users.dbf'",
            ],
            Verdict.FATAL,
            "ORA-01547",
        ),
        (
            [
                "RMAN-03002: failure of restore command",
                'ORA-19505: failed to identify file "x"',
                "ORA-27037: unable to obtain file status",
            ],
            # RMAN failed over to every older backup already: the same script again cannot help.
            Verdict.FATAL,
            "ORA-19505",
        ),
        (
            ["RMAN-03002: failure of backup command", "ORA-03113: end-of-file"],
            Verdict.RETRYABLE,
            "ORA-03113",
        ),
        (["RMAN-08137: warning: archived log not deleted"], Verdict.WARNING, "RMAN-08137"),
        # A fatal inner code outranks a retryable one in the same stack.
        (
            ["RMAN-03009: failure", "ORA-19511: media manager", "ORA-01031: insufficient"],
            Verdict.FATAL,
            "ORA-01031",
        ),
        # Only wrappers: the cause is unknown, so nothing says a retry helps.
        (["RMAN-03002: failure of backup command"], Verdict.FATAL, "RMAN-00571"),
        (["ORA-99999: something new"], Verdict.FATAL, "ORA-99999"),
    ],
)
def test_stack_is_classified_by_its_inner_code(
    inner: list[str], verdict: Verdict, code: str
) -> None:
    result = classify([*STACK, *inner])
    assert (result.verdict, result.code) == (verdict, code)


def test_data_pump_client_codes_wrap_the_ora_cause() -> None:
    result = classify(
        ["UDE-00008: operation generated ORACLE error 12541", "ORA-12541: no listener"]
    )
    assert result.verdict is Verdict.RETRYABLE
    assert rule_for("UDE-01234").verdict is Verdict.WRAPPER


def test_data_pump_codes_are_benign_only_where_a_workflow_allows_them() -> None:
    line = 'ORA-31684: Object type USER:"OUTLN" already exists'
    assert classify([line]).verdict is Verdict.FATAL
    assert benign_in("datapump.full_import", "ORA-31684", line) is not None
    assert benign_in("datapump.schema_import", "ORA-31684", line) is None
    assert classify(["ORA-39083: Object type failed"]).verdict is Verdict.FATAL


def test_codes_are_found_anywhere_in_a_line_and_normalized() -> None:
    assert codes_in(["channel ch1: ORA-19511 then RMAN-3009"]) == [
        ("ORA-19511", "channel ch1: ORA-19511 then RMAN-3009"),
        ("RMAN-03009", "channel ch1: ORA-19511 then RMAN-3009"),
    ]


def test_failure_carries_the_retry_decision_and_the_line() -> None:
    failure = classify([*STACK, "RMAN-03009: x", "ORA-19511: media manager error"]).failure(
        "backup"
    )
    assert failure.retryable
    assert failure.code == "ORA-19511"
    assert "ORA-19511: media manager error" in failure.reason
    assert "retry with backoff" in failure.reason


def test_driver_codes_keep_their_four_digits() -> None:
    verdict = classify(["DPY-6005: cannot connect to database"])
    assert verdict.code == "DPY-6005"
    assert verdict.retryable


@pytest.mark.parametrize(
    "code",
    [
        "ORA-01033",
        "ORA-01089",
        "ORA-00020",
        "ORA-12516",
        "ORA-12520",
        "ORA-12528",
        "ORA-12170",
        "ORA-03114",
        "ORA-12537",
        "ORA-12547",
    ],
)
def test_a_transient_connection_code_is_retryable(code: str) -> None:
    assert classify([f"{code}: x"]).verdict is Verdict.RETRYABLE


@pytest.mark.parametrize(
    "code",
    [
        "RMAN-06059",
        "ORA-19505",
        "ORA-39151",
        "RMAN-20208",
        "RMAN-06180",
        "RMAN-06496",
        "ORA-19573",
        "ORA-01124",
        "ORA-01843",
    ],
)
def test_a_code_the_same_run_cannot_get_past_is_known_and_fatal(code: str) -> None:
    assert code in _known()
    assert classify([f"{code}: x"]).verdict is Verdict.FATAL


def _known() -> set[str]:
    from services.engines.oracle.errors import _TABLE

    return set(_TABLE)
