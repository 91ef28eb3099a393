# Every target bootstraps its own virtualenv, so a fresh clone needs only Python 3.11 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: soak-migrate help venv test lint typecheck unit integration e2e demo up status schemas bench bench-archive bench-catalog bench-migrate bench-restore chaos chaos-cluster clean

help:
	@echo "make demo   - start the embedded stack (NATS, four services) and show it healthy"
	@echo "make test   - lint, type check and the whole test suite"
	@echo "make schemas - regenerate schemas/json and schemas/asyncapi.json from the models"
	@echo "make bench  - benchmarks (ratios against a baseline measured in the same run)"
	@echo "make bench-archive - WAL archiving vs pgBackRest, barman-cloud and the limits (docs/benchmarks.md)"
	@echo "make bench-catalog - catalog ingest, queries and rebuild over 1M logs (docs/benchmarks.md)"
	@echo "make bench-migrate - physical-stream/archive cutover downtime, lost commits, copy vs pg_basebackup; logical-upgrade 15 -> 18 vs pg_upgrade and pg_dump/pg_restore (docs/benchmarks.md)"
	@echo "make bench-restore - restore to the latest point vs pgbackrest restore (docs/benchmarks.md)"
	@echo "make soak-migrate - SIGKILL the planner, then the executor, as a migration enters every phase"
	@echo "make chaos  - soak under faults (kills, NATS restarts, store errors), checked against ground truth; CHAOS_MINUTES=$(CHAOS_MINUTES) CHAOS_RESTORES=$(CHAOS_RESTORES) (docs/guarantees.md)"
	@echo "make chaos-cluster - the same soak on three NATS nodes at R3, nodes SIGKILLed and restarted (docs/guarantees.md)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest -m unit

integration: $(STAMP)
	$(BIN)/pytest -m integration

e2e: $(STAMP)
	$(BIN)/pytest -m e2e

demo: $(STAMP)
	$(BIN)/tidemark demo

up: $(STAMP)
	$(BIN)/tidemark up

status: $(STAMP)
	$(BIN)/tidemark status

schemas: $(STAMP)
	$(BIN)/python -m schemas.export

bench: $(STAMP)
	$(BIN)/python -m bench

bench-archive: $(STAMP)
	$(BIN)/python -m bench archive

bench-catalog: $(STAMP)
	$(BIN)/python -m bench catalog

bench-migrate: $(STAMP)
	$(BIN)/python -m bench migrate

bench-restore: $(STAMP)
	$(BIN)/python -m bench restore

CHAOS_MINUTES  ?= 5
CHAOS_RESTORES ?= 5

chaos: $(STAMP)
	CHAOS_MINUTES=$(CHAOS_MINUTES) CHAOS_RESTORES=$(CHAOS_RESTORES) $(BIN)/python -m tests.chaos

soak-migrate: $(STAMP)
	TIDEMARK_KILL_EVERY_PHASE=1 $(BIN)/pytest tests/e2e/test_migration.py -k each_phase -p no:randomly

chaos-cluster: $(STAMP)
	CHAOS_NATS=cluster CHAOS_MINUTES=$(CHAOS_MINUTES) CHAOS_RESTORES=$(CHAOS_RESTORES) $(BIN)/python -m tests.chaos

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
