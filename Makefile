# The two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-office

.PHONY: demo test test-fast bench docs messages clean

$(BIN)/syncdb: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/syncdb
	$(BIN)/syncdb demo $(DEMO_DIR)

# The test files run in one process per core (pytest-xdist), a file's tests together in one.
test: $(BIN)/syncdb
	$(BIN)/pytest -n auto --dist loadfile

test-fast: $(BIN)/syncdb
	$(BIN)/pytest -n auto --dist loadfile -m "not slow"

bench: $(BIN)/syncdb
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

docs: $(BIN)/syncdb
	$(BIN)/cog -r docs/*.md

# Extract the messages users read into the zh_CN catalogue and compile it.
messages: $(BIN)/syncdb
	$(BIN)/python -m syncdb.i18n update

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
