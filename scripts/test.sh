#!/bin/bash
# The whole test suite: set-up (idempotent), lint, then pytest including the kernel
# tests in network namespaces (needs root). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/pytest "$@"
