# apimon's two entry points for a fresh machine; both create .venv/ and install what they need.
#   make quickstart   runs apimon's main job end to end on the local target
#   make test         runs the whole test suite
#   make fuzz         a long run of the plan-file fuzzer (APIMON_FUZZ_EXAMPLES inputs, new ones every run)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: quickstart test lint bench clean browser fuzz dist

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip uninstall --quiet --yes apimon 2>/dev/null || true  # the distribution's old name
	@$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

quickstart: $(STAMP)
	@bash examples/quickstart.sh

# The browser tests drive Debian's chromium (never a downloaded browser): installed here when missing.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (Debian package) for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: /usr/bin/chromium is missing and cannot be installed here (apt-get install -y chromium as root);" \
	      "the browser tests will skip (fail under CI)"; \
	  fi; \
	fi

test: $(STAMP) browser
	@$(BIN)/python -m pytest

# inputs that fail are kept in out/fuzz-crashes/ (keep each as a tests/corpus/ case once fixed)
fuzz: $(STAMP)
	@APIMON_FUZZ_EXAMPLES=$${APIMON_FUZZ_EXAMPLES:-100000} APIMON_FUZZ_CRASHES=$${APIMON_FUZZ_CRASHES:-out/fuzz-crashes} \
	  $(BIN)/python -m pytest tests/planfile/test_fuzz.py -n 0 -p no:cacheprovider -s -x -q \
	  -k unexpected_error

# the wheel and sdist a plans repository installs (`pip install apimon-cli==VERSION` or the wheel file)
dist: $(STAMP)
	@$(BIN)/python -m build --outdir dist .

lint: $(STAMP)
	@$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .apimon plans/.apimon out dist
