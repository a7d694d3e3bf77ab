# One entry point for developers, CI and the README. Every target sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo up test unit integration bench lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install  ## replay Online Retail on the embedded runtime, train, print recommendations
	$(BIN)/aisle demo $(ARGS)

up: install    ## start the stack and keep it running
	$(BIN)/aisle up $(ARGS)

test: install  ## the whole suite: unit + integration against real broker and Valkey
	$(BIN)/pytest $(ARGS)

unit: install
	$(BIN)/pytest tests/unit $(ARGS)

bench: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run_all $(ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .aisle .pytest_cache
