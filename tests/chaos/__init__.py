"""`make chaos`: a bounded soak of the whole stack under faults, checked against ground truth.

Not part of `make test` (it runs for minutes); `tests/unit/test_chaos_proxy.py` covers the proxy
and imports the package. The pieces: `proxy` (faults between the services and the GCS emulator),
`writer` (the PostgreSQL load and its ledger), `monkey` (SIGKILLs and nats-server restarts),
`cluster` (the stack on three NATS nodes at R3, for `make chaos-cluster`),
`truth` (what PostgreSQL produced vs what the bucket holds), `soak` (the run and its verdict).
"""
