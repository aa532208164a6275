# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean-var browser sshd nightly pg-account

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the portal and its dependencies into $(VENV)…"
	@# Quiet: drop pip's notes about package mirrors absent here and setuptools' editable-install notice.
	@$(PY) -m pip install --quiet --upgrade pip 2>&1 | sed '/^WARNING: Location/d'
	@PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[dev]' 2>&1 | sed '/^WARNING: Location/d'
	@touch $(STAMP)

install: $(STAMP) pg-account

# As root, the embedded PostgreSQL runs as the system account portal-pg (it refuses
# root): made here once, under a lock, never when a test process or `make run` starts.
pg-account:
	@scripts/pg-system-account

run: $(STAMP) pg-account
	@$(PY) manage.py run

# The browser tests need Chromium: scripts/ensure-browser finds or installs one,
# or stops at once saying what to install. The SSH deployment tests start OpenSSH servers
# of their own: scripts/ensure-sshd finds or installs openssh-server (and, as root, the
# account portal-ssh they run as), or stops at once saying what to install.
# TEST_PROCESSES: pytest-xdist processes, each with its own embedded servers and worker
# (testkit/plugin.py); a test module stays in one process (--dist loadfile).
TEST_PROCESSES ?= 2
test: $(STAMP) pg-account
	@browser="$$(scripts/ensure-browser $(PY))" || exit 1; \
	sshd="$$(scripts/ensure-sshd)" || exit 1; \
	PORTAL_CHROMIUM="$$browser" PORTAL_SSHD="$$sshd" \
	  $(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

browser:
	@scripts/ensure-browser $(PY)

sshd:
	@scripts/ensure-sshd

# Longer random searches than `make test` runs (docs/security.md), and schemathesis'
# CLI with 200 examples per operation as every demo user and an outsider, with a new
# seed each run (docs/api.md, "Checking the contract").
nightly: $(STAMP)
	@PORTAL_STATE_MACHINE_EXAMPLES=500 PORTAL_STATE_MACHINE_STEPS=60 \
	  $(PY) -m pytest -q -p no:cacheprovider tests/security/test_state_machine.py
	@PORTAL_SCHEMATHESIS_EXAMPLES=200 PORTAL_SCHEMATHESIS_ROLES=all \
	  PORTAL_SCHEMATHESIS_SEED=random \
	  $(PY) -m pytest -q -p no:cacheprovider -rA tests/api/test_schemathesis.py \
	  -k test_schemathesis_finds_no_mismatch

# ruff; import-linter's contracts (pyproject.toml: the direction of the apps, and of
# the modules inside them); no import cycle between first-party modules (grimp); no
# test or demo code that patches a private name of an app or Django's clock; no
# first-party module over 600 lines. Any of them fails here and in CI.
lint: $(STAMP)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/lint-imports --no-cache
	@$(PY) tools/check_import_cycles.py
	@$(PY) tools/check_private_patches.py
	@$(PY) tools/check_module_size.py

clean-var:
	rm -rf var
