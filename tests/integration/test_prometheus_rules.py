"""The chart's alert rules meet a real `promtool` (Debian's `prometheus` package; `.ci/run`
installs it): they pass `promtool check rules`, and `promtool test rules` shows each alert
firing on the series it watches and staying quiet when all is well."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_helm_chart import ALERTING, named, render

pytestmark = pytest.mark.integration
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus; .ci/run does)"
)

DB = 'database="orders"'
DEAD = 'tidemark_dead_letters_total{service="planner",type="x",error="TM-X"}'
#: Per alert: series that make it fire (evaluated at `at`, with the annotations it must carry)
#: and series that keep it quiet at the same time. Overdue alerts compare time() with a
#: timestamp of 0, so `at` is just past their limit (26 h, 192 h) and quiet is 1 h.
CASES: dict[str, dict[str, Any]] = {
    "TidemarkRpoOverTarget": {
        "at": "35m",
        "fires": [{"series": f"tidemark_rpo_seconds{{{DB}}}", "values": "1200x40"}],
        "quiet": [{"series": f"tidemark_rpo_seconds{{{DB}}}", "values": "30x40"}],
        "annotations": {
            "summary": "orders: the newest restorable point is older than the RPO target",
            "description": "orders can be restored only up to 20m 0s ago (target 900 s): "
            "archiving or the catalog is behind.",
        },
    },
    "TidemarkArchivingStalled": {
        "at": "35m",
        "fires": [{"series": f"tidemark_archive_oldest_wait_seconds{{{DB}}}", "values": "900x40"}],
        "quiet": [{"series": f"tidemark_archive_oldest_wait_seconds{{{DB}}}", "values": "5x40"}],
        "annotations": {
            "summary": "orders: archiving is stalled",
            "description": "Logs of orders wait to be archived (oldest older than 600 s, or the "
            "backlog grows while nothing is stored).",
        },
    },
    "TidemarkBackupOverdue": {
        "at": "27h",
        "fires": [
            {"series": f"tidemark_last_backup_timestamp_seconds{{{DB}}}", "values": "0x1700"}
        ],
        "quiet": [
            {"series": f"tidemark_last_backup_timestamp_seconds{{{DB}}}", "values": "0+60x1700"}
        ],
        "annotations": {
            "summary": "orders: no backup for over 26 h",
            "description": "The newest completed backup of orders is 1d 3h 0m 0s old.",
        },
    },
    "TidemarkVerificationOverdue": {
        "at": "193h",
        "fires": [
            {"series": f"tidemark_last_verification_timestamp_seconds{{{DB}}}", "values": "0x11700"}
        ],
        "quiet": [
            {
                "series": f"tidemark_last_verification_timestamp_seconds{{{DB}}}",
                "values": "0+60x11700",
            }
        ],
        "annotations": {
            "summary": "orders: no good verification for over 192 h",
            "description": "The newest verification that proved a backup of orders restorable "
            "is 8d 1h 0m 0s old.",
        },
    },
    "TidemarkDeadLettersIncreasing": {
        "at": "35m",
        "fires": [{"series": DEAD, "values": "0+1x40"}],
        "quiet": [{"series": DEAD, "values": "3x40"}],
        "annotations": {
            "summary": "planner dead-lettered x (TM-X)",
            "description": "15 messages given up on in 15 min; list them with `tidemark dlq`.",
        },
    },
}


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rule = named(render(ALERTING), "PrometheusRule", "prod-tidemark")
    path = tmp_path_factory.mktemp("rules") / "tidemark-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def _alerts(rules: Path) -> list[str]:
    groups = yaml.safe_load(rules.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_case() -> None:
    rule = named(render(ALERTING), "PrometheusRule", "prod-tidemark")
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert sorted(alerts) == sorted(CASES)


@needs_promtool
def test_the_chart_rules_pass_promtool_check(rules_file: Path) -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(CASES)} rules found" in done.stdout


def _case(alert: str, series: list[dict[str, str]], at: str, expected: list[Any]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
    }


def _labels(alert: str, series: list[dict[str, str]]) -> dict[str, str]:
    text = series[0]["series"]
    inner = text[text.index("{") + 1 : text.index("}")]
    labels = {k: v.strip('"') for k, v in (part.split("=", 1) for part in inner.split(","))}
    severity = "warning" if "Overdue" in alert or "DeadLetters" in alert else "critical"
    return {**labels, "severity": severity}


@needs_promtool
def test_each_alert_fires_on_trouble_and_stays_quiet_otherwise(
    rules_file: Path, tmp_path: Path
) -> None:
    assert PROMTOOL is not None
    tests = []
    for alert, case in CASES.items():
        fired = {
            "exp_labels": _labels(alert, case["fires"]),
            "exp_annotations": case["annotations"],
        }
        tests.append(_case(alert, case["fires"], case["at"], [fired]))
        tests.append(_case(alert, case["quiet"], case["at"], []))
    spec = tmp_path / "tests.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": tests}
        )
    )
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
