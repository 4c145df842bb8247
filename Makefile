# posttrain: two commands on a fresh machine: `make demo` and `make test`.
# The virtual environment and every cache live outside the checkout (POSTTRAIN_HOME), so that a
# second run, and CI on the same machine, reuse them.

SHELL := /bin/bash
POSTTRAIN_HOME ?= $(HOME)/.cache/posttrain
export POSTTRAIN_HOME
# One environment per checkout (a CI clone must not re-point the work tree's editable
# installs); they share uv's cache, so a new one is made in seconds.
CHECKOUT_ID := $(shell printf %s "$(CURDIR)" | md5sum | cut -c1-10)
VENV ?= $(POSTTRAIN_HOME)/venvs/$(CHECKOUT_ID)
PY := $(VENV)/bin/python
UV := $(POSTTRAIN_HOME)/uvbin/bin/uv
export UV_CACHE_DIR := $(POSTTRAIN_HOME)/uv-cache
BIN := $(VENV)/bin
MYPY_TARGETS := libs/events/posttrain/events libs/service/posttrain/service src/posttrain \
	$(wildcard services/*/posttrain/*)
B ?= bus

# Editable installs of every member; the trainer agent and the event schemas can also be
# installed alone (see README).
MEMBERS := -e ./libs/events -e ./libs/service -e ./services/orchestrator \
	-e ./services/metrics_ingest -e ./services/diagnostics -e ./services/trainer_agent \
	-e ./services/gateway -e '.[dev]'

.PHONY: install browser sshd lint typecheck unit test demo bench stack-up stack-down stack-status doctor clean-stack

$(UV):
	python3 -m pip install --quiet --disable-pip-version-check --target $(POSTTRAIN_HOME)/uvbin uv

$(PY): | $(UV)
	$(UV) venv --quiet --python 3.11 $(VENV)

install: $(PY)
	$(UV) pip install --quiet --python $(PY) $(MEMBERS)

# The web page's test drives Debian's chromium and its driver: installed once (as root, or
# through sudo), nothing done when both are there. Without apt, it says so and the test says how.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "make: no apt-get here: install chromium and chromedriver for the web page's test"; \
		exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	echo "make: installing chromium and chromium-driver (the web page's test)"; \
	$$sudo apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver >/dev/null \
		|| echo "make: chromium was not installed: the web page's test will fail and say how"

# The SSH run mode's tests start Debian's OpenSSH server on 127.0.0.1 as the "remote" host:
# installed once like the browser above (the package's own service is not used or started).
sshd:
	@if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "make: no apt-get here: install openssh-server for the SSH run mode's tests"; \
		exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	echo "make: installing openssh-server (the SSH run mode's tests)"; \
	$$sudo apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq openssh-server >/dev/null \
		|| echo "make: openssh-server was not installed: the SSH tests will fail and say how"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy $(MYPY_TARGETS)

# The fast tests alone: no broker, no database.
unit: install
	$(BIN)/pytest tests/unit

stack-up: install
	$(BIN)/posttrain stack up

stack-down:
	@if [ -x $(BIN)/posttrain ]; then $(BIN)/posttrain stack down; fi

stack-status: install
	$(BIN)/posttrain stack status

doctor: install
	$(BIN)/posttrain doctor

# Starts the stack, runs lint, types and every test, and stops the stack it started whatever
# the outcome.
test: install browser sshd
	@set -o pipefail; started=0; \
	if ! $(BIN)/posttrain stack status --quiet; then started=1; fi; \
	$(BIN)/posttrain stack up || exit 1; \
	rc=0; \
	$(BIN)/ruff check . || rc=1; \
	$(BIN)/mypy $(MYPY_TARGETS) || rc=1; \
	$(BIN)/pytest || rc=1; \
	if [ $$started = 1 ]; then $(BIN)/posttrain stack down; fi; \
	exit $$rc

demo: install
	$(BIN)/posttrain stack up
	$(BIN)/python -m examples.demo

bench: install
	$(BIN)/posttrain stack up
	$(BIN)/python -m bench.$(B)
