# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Every install goes through the constraints file: it pins torch==2.13.0 (CPU build).
PIP_INSTALL := $(BIN)/pip install --quiet --constraint constraints.txt

# Production-like settings for `check --deploy`.
DEPLOY_ENV := DEBUG=false SECRET_KEY=deploy-check-$(shell head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n') \
	DATABASE_URL=postgres://liveupdate@db.invalid/liveupdate ALLOWED_HOSTS=liveupdate.example \
	SECURE_SSL_REDIRECT=true SECURE_HSTS_SECONDS=31536000

# The suite runs against the real services (started by .ci/services when down).
TEST_ENV := DATABASE_URL=postgres://postgres@127.0.0.1:5432/liveupdate REDIS_URL=redis://127.0.0.1:6379/0 \
	SECRET_KEY=test-secret-key-that-is-long-enough-for-django-checks-0123456789 DEBUG=false

.PHONY: demo test install system-deps services lint checks pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt dlrm_core/_serving_kernel.c dlrm_core/_training_kernel.c \
		dlrm_core/_admission_kernel.c dlrm_core/_interaction_kernel.c dlrm_core/_cuckoo_index.h
	$(PIP_INSTALL) -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/liveupdate demo

# Chromium for the browser tests, docker-compose to validate docker/compose.yaml (no engine),
# Node.js and npm for the dashboard's lint and unit tests (Debian's packages, when missing).
system-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/docker-compose ] || missing="$$missing docker-compose"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q$$missing; \
		else echo "Missing: run 'sudo apt-get install$$missing' for the browser, compose and JS tests"; fi; \
	fi

services:
	bash .ci/services

# The dashboard's JS: ESLint (pinned by frontend/package-lock.json) and node's test runner over
# the pure helpers (tests/js/, no browser, no services).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(TEST_ENV) $(BIN)/mypy
	$(BIN)/python .ci/sizes.py
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	frontend/node_modules/.bin/eslint --config frontend/eslint.config.js frontend tests/js
	node --test --test-reporter=spec tests/js/*.test.mjs

checks: install
	$(BIN)/python manage.py check
	$(DEPLOY_ENV) $(BIN)/python manage.py check --deploy --fail-level WARNING
	$(BIN)/python manage.py makemigrations --check --dry-run

pytest: install
	$(TEST_ENV) $(BIN)/pytest -p no:cacheprovider -ra $(PYTEST_ARGS)

test: install system-deps services lint checks pytest

bench: install
	$(PIP_INSTALL) -e '.[test,bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) var test-artifacts
