#!/usr/bin/env bash
# Create .venv with sktransfer (editable) and its test/demo dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -c constraints.txt -e ".[test,docs]"
