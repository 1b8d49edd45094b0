# The two commands a newcomer needs: `make demo` and `make test`.
# Both need only python3 (3.11+) and make: they build their own environments.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: demo test lint typecheck docs-check bench bench-kafka bench-nats bench-profile bench-check setup clean docs

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

setup: $(UV)
	$(UV) sync --frozen --all-groups --python $(PYTHON)

## Run the order saga demo on the in-memory broker (or $$EVENTBUS_URL), then as three
## service processes (eventbus run) on one SQLite file.
demo: $(UV)
	$(UV) sync --frozen --inexact --no-default-groups --python $(PYTHON)
	$(VENV)/bin/python -m examples.order_saga.demo
	$(VENV)/bin/python -m examples.order_saga.processes

lint: setup
	$(VENV)/bin/ruff format --check conftest.py eventbus adapters tests integration_tests examples bench scripts
	$(VENV)/bin/ruff check conftest.py eventbus adapters tests integration_tests examples bench scripts/check_layers.py scripts/test_shards.py
	@# The import graph against the layers of docs/architecture.md and adapters/README.md.
	$(VENV)/bin/python scripts/check_layers.py

typecheck: setup
	$(VENV)/bin/mypy eventbus adapters/kafka/eventbus_kafka adapters/rabbitmq/eventbus_rabbitmq \
		adapters/redis/eventbus_redis adapters/nats/eventbus_nats adapters/sqs/eventbus_sqs \
		adapters/postgres/eventbus_postgres
	@# The guide's example service and its tests, as a user would type-check them.
	MYPYPATH=examples/testing $(VENV)/bin/mypy -m shop -m test_shop_service

## The docs build with no warning (a broken link or a page missing from the nav fails).
docs-check: setup
	$(VENV)/bin/mkdocs build --strict --site-dir .reports/site

## Lint, type-check, unit tests, conformance on memory and on every real broker, mutants.
test: lint typecheck docs-check
	@# The suite's shards at once (scripts/test_shards.py; which test runs in which: conftest.py),
	@# each under coverage run, not pytest --cov: our pytest plugin imports eventbus before
	@# pytest-cov starts.
	$(VENV)/bin/python scripts/test_shards.py
	$(VENV)/bin/python -m coverage combine -q
	$(VENV)/bin/python -m coverage report --fail-under=90
	@# Deliberate bugs in the core that the conformance suite must catch (fails if one survives).
	$(VENV)/bin/python scripts/mutants.py

## Regenerate docs/semantics.md capabilities and docs/conformance.md from the last test run.
docs: setup
	$(VENV)/bin/python scripts/gen_docs.py

bench: setup
	$(VENV)/bin/python bench/bench_memory.py

bench-kafka: setup
	$(VENV)/bin/python bench/bench_kafka.py

bench-nats: setup
	$(VENV)/bin/python bench/bench_nats.py

## Issue 24's targets on every broker (memory, Kafka, RabbitMQ, NATS, Redis, SQS), one table:
## median of 3 interleaved repeats; no verdict above load average 1.5. Not part of `make test`.
bench-check: setup
	$(VENV)/bin/python bench/bench_check.py

## Per-stage costs and lone-publish latency (memory and Kafka), then RSS over 1M events on memory.
bench-profile: setup
	$(VENV)/bin/python bench/bench_kafka.py --events 20000 --repeat 2 --stages --latency
	$(VENV)/bin/python bench/bench_memory.py --rss

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
