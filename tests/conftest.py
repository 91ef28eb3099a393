"""Test harness. Every server a test needs, the test starts: nats-server from the wheel, the GCS
emulator, PostgreSQL clusters made with initdb. Nothing here touches the machine's own services."""

pytest_plugins = [
    "tests.fixtures.telemetry",
    "tests.fixtures.nats",
    "tests.fixtures.gcs",
    "tests.fixtures.postgres",
    "tests.fixtures.browser",
]
