# One entry point for developers, CI and the README. Every target sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install browser demo up test unit integration bench lint clean

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

# Debian's chromium for the browser tests (playwright cannot download browsers here).
# Root (CI) installs it; without root the browser tests skip and say so.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "no root: browser tests will be skipped (apt-get install chromium)"; exit 0; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends chromium; \
	fi

test: install browser  ## the whole suite: unit + integration (real broker, Valkey, Chromium)
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
