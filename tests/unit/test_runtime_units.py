"""Settings precedence, backoff bounds and log records: the small pieces the services share."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from opentelemetry import trace

from services.bus import backoff_delay
from services.settings import load_settings
from services.telemetry.logs import JsonFormatter

pytestmark = pytest.mark.unit


def test_environment_overrides_file_and_nests_with_double_underscore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tidemark.toml"
    config.write_text('node = "from-file"\n[bus]\nmax_deliver = 3\nack_wait_s = 12.5\n')
    monkeypatch.setenv("TIDEMARK_CONFIG", str(config))
    monkeypatch.setenv("TIDEMARK_BUS__MAX_DELIVER", "5")
    settings = load_settings()
    assert settings.node == "from-file"
    assert settings.bus.max_deliver == 5  # environment beats the file
    assert settings.bus.ack_wait_s == 12.5  # the file beats the default


def test_a_missing_config_file_is_an_error_not_a_silent_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIDEMARK_CONFIG", raising=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_unknown_settings_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tidemark.toml"
    config.write_text("[bus]\nmax_delivr = 3\n")
    monkeypatch.setenv("TIDEMARK_CONFIG", str(config))
    with pytest.raises(ValueError, match="max_delivr"):
        load_settings()


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_grows_exponentially_within_its_cap(attempt: int) -> None:
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt, 0.5, 30.0) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1  # jittered, so a herd of retries spreads out


def test_json_log_lines_carry_the_trace_id() -> None:
    formatter = JsonFormatter("archiver")
    record = logging.makeLogRecord(
        {"msg": "stored %s", "args": ("seg",), "levelname": "INFO", "name": "t", "key": "k1"}
    )
    with trace.get_tracer("t").start_as_current_span("upload") as span:
        line = json.loads(formatter.format(record))
    assert line["msg"] == "stored seg"
    assert line["service"] == "archiver"
    assert line["key"] == "k1"
    assert line["trace_id"] == f"{span.get_span_context().trace_id:032x}"
