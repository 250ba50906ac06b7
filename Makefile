# apimon's two entry points for a fresh machine; both create .venv/ and install what they need.
#   make quickstart   runs apimon's main job end to end on the local target
#   make test         runs the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: quickstart test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

quickstart: $(STAMP)
	@bash examples/quickstart.sh

test: $(STAMP)
	@$(BIN)/python -m pytest

lint: $(STAMP)
	@$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .apimon out
