# RoadWatch: `make up` runs the whole system natively, `make test` runs every test.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: help up down status reset logs test test-unit test-integration test-e2e test-faults lint \
	bench bootstrap docs-diagram \
	compose-up compose-down compose-test compose-lint

help:
	@echo "make up       install what is missing, start everything, print the URL"
	@echo "make down     stop every program and supervisord (data is kept)"
	@echo "make status   each part: supervisor state, pid, restarts, health"
	@echo "make logs     follow every log"
	@echo "make reset    stop and delete all local state (.run/)"
	@echo "make test     every test (unit, integration, end to end) on real servers"
	@echo "make test-faults  every process killed, frozen or stopped under load; nothing lost"
	@echo "make lint     ruff and mypy"
	@echo "make bench    performance benchmarks, written to docs/PERFORMANCE.md"
	@echo "make docs-diagram  render docs/architecture.svg from docs/architecture.dot (Graphviz)"
	@echo "make compose-up    the same system as containers (docker-compose), built and started"
	@echo "make compose-down  stop the containers (volumes are kept)"
	@echo "make compose-test  build, boot and test the containers end to end, then remove them"
	@echo "make compose-lint  hadolint on every Dockerfile"

bootstrap:
	@deploy/native/bootstrap.sh

up: bootstrap
	@$(VENV)/roadwatch up

down:
	@$(VENV)/roadwatch down

status:
	@$(VENV)/roadwatch status

reset:
	@$(VENV)/roadwatch reset

logs:
	@tail -n 20 -F .run/logs/*.log

test:
	@deploy/native/bootstrap.sh --test
	@$(VENV)/pytest -q tests

test-unit:
	@$(VENV)/pytest -q tests/unit

test-integration:
	@$(VENV)/pytest -q tests/integration

test-e2e:
	@$(VENV)/pytest -q tests/e2e

# The fault suite: a private system per fault (about 20 minutes); figures in test-artifacts/.
test-faults:
	@deploy/native/bootstrap.sh --test
	@$(VENV)/pytest -q -o addopts="-ra --strict-markers" tests/faults; status=$$?; \
		cat test-artifacts/faults.txt 2>/dev/null; exit $$status

lint:
	@$(VENV)/ruff check .
	@$(VENV)/ruff format --check .
	@$(VENV)/mypy

bench:
	@$(VENV)/python -m bench

# The architecture picture: docs/architecture.dot is its source, the SVG is committed beside it.
docs-diagram:
	@command -v dot >/dev/null || { apt-get update -qq && apt-get install -y -qq graphviz; }
	@dot -Tsvg docs/architecture.dot -o docs/architecture.svg
	@echo "docs/architecture.svg rendered from docs/architecture.dot"

# Containers (compose.yaml): the same deploy/ files, one image per server, one for Python.
COMPOSE := docker-compose

compose-up:
	@deploy/compose/prepare.sh
	@$(COMPOSE) up --detach --build
	@$(COMPOSE) ps

compose-down:
	@$(COMPOSE) down

compose-test:
	@deploy/compose/test.sh

compose-lint:
	@deploy/compose/lint.sh
