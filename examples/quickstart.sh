#!/usr/bin/env bash
# apimon's quick start on the local target (no cloud account): validate -> plan -> apply -> plan.
# Run it through `make quickstart`, which creates .venv/ first.
set -euo pipefail
cd "$(dirname "$0")/.."
APIMON=".venv/bin/apimon"
PLAN="plans/local.yaml"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "apimon validate $PLAN"
$APIMON validate "$PLAN"

step "apimon plan $PLAN"
$APIMON plan "$PLAN"

step "apimon apply $PLAN --auto-approve"
$APIMON apply "$PLAN" --auto-approve

step "apimon plan $PLAN --detailed-exitcode   (nothing left to do: exit 0)"
$APIMON plan "$PLAN" --detailed-exitcode
