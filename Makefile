# The two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-office

.PHONY: demo test test-fast bench docs clean

$(BIN)/syncdb: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/syncdb
	$(BIN)/syncdb demo $(DEMO_DIR)

test: $(BIN)/syncdb
	$(BIN)/pytest

test-fast: $(BIN)/syncdb
	$(BIN)/pytest -m "not slow"

bench: $(BIN)/syncdb
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

docs: $(BIN)/syncdb
	$(BIN)/cog -r docs/*.md

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
