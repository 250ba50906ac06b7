#!/usr/bin/env bash
# apimon's quick start on the local target (no cloud account): see examples/quickstart.py.
# Run it through `make quickstart`, which creates .venv/ first.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python examples/quickstart.py
