# mailish: `make up` runs the whole service locally; `make test` runs every check CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: up test venv lint typecheck contracts pytest bench clean deploy-tools

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

up: venv
	@scripts/system-packages.sh run
	$(BIN)/python -m devtools.demo

lint: venv
	$(BIN)/ruff check mailish tests bench devtools
	$(BIN)/ruff format --check mailish tests bench devtools

typecheck: venv
	$(BIN)/mypy

contracts: venv
	$(BIN)/lint-imports

# helm and the manifest validators, into .tools/ (tests/deploy skips, saying why, without them)
deploy-tools:
	-@scripts/deploy-tools.sh

pytest: venv deploy-tools
	@scripts/system-packages.sh test
	$(BIN)/pytest

test: lint typecheck contracts pytest

bench: venv
	@scripts/system-packages.sh test
	$(BIN)/pytest bench -m slow -s

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
