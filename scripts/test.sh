#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian/Ubuntu machine: installs the Debian packages the
# tests drive (Prometheus with promtool, Chromium, systemd-analyze, gcc), creates .venv with the
# package and its test extras, builds the fake NVML library (all in scripts/setup.sh), lints,
# type-checks, then runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k legacy
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh test

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
