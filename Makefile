# Two set-up commands: `make run` and `make test`. Both create .venv (Python 3.10) when missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1

.PHONY: run test test-fast tensorboard report bench clean venv chromium

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@PY310=$$(command -v python3.10 || (command -v pyenv >/dev/null && pyenv which python3.10 2>/dev/null) || true); \
	if [ -z "$$PY310" ]; then \
	  echo "error: Python 3.10 is required (TFX 1.16 supports Python < 3.11)."; \
	  echo "  Install it, e.g. 'pyenv install 3.10' (a .python-version file selects it) or 'apt-get install python3.10'."; \
	  exit 1; fi; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))'; then \
	  rm -rf $(VENV) && $$PY310 -m venv $(VENV); fi
	$(PY) -m pip install --quiet --upgrade "pip==24.2"
	$(PY) -m pip install --quiet --no-deps -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m pipeline run $(ARGS)

# Two workers, one per core; tests sharing a fixture stay on one worker (xdist_group), whole-pipeline tests first.
PYTEST_WORKERS := -n 2 --dist loadgroup --no-loadscope-reorder

test: $(STAMP) chromium
	$(PY) -m pytest -x -v --durations=15 $(PYTEST_WORKERS) $(ARGS)

# Headless Chromium (Debian's package) renders the HTML run report in the tests.
chromium:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test-fast: $(STAMP)
	$(PY) -m pytest -x -v -m "not e2e" $(ARGS)

tensorboard: $(STAMP)
	$(PY) -m pipeline tensorboard $(ARGS)

report: $(STAMP)
	$(PY) -m pipeline report $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/scale_bench.py
	$(PY) benchmarks/compression_bench.py
	$(PY) benchmarks/serving_bench.py

clean:
	rm -rf artifacts
