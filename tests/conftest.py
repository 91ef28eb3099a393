"""Test harness. Every server a test needs, the test starts: nats-server from the wheel, the GCS
emulator, PostgreSQL clusters made with initdb. Nothing here touches the machine's own services.

Property tests explore fresh examples on a developer's machine, and the same ones on every CI run
(`CI=true`): a run there is red for a change, never for a draw. `HYPOTHESIS_PROFILE=explore`
draws many more examples, to look for what the fixed draw misses."""

import os

from hypothesis import settings

pytest_plugins = [
    "tests.fixtures.telemetry",
    "tests.fixtures.nats",
    "tests.fixtures.natscluster",
    "tests.fixtures.gcs",
    "tests.fixtures.postgres",
    "tests.fixtures.browser",
]

# Never a default port: a user's own `tidemark up` (NATS 4222, timeline page 8470) may run beside
# the suite. An embedded stack started by a test takes free ports (inherited by every process a
# test starts); a catalog a test starts itself serves no page unless the test asks for one
# (`tests/integration/test_catalog_ingest.catalog_settings`).
os.environ["TIDEMARK_STACK_DEFAULT_PORTS"] = "0"

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=2000)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default")
)
