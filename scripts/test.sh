#!/bin/bash
# The whole test suite: set-up (idempotent), lint, the BPF objects, then pytest including
# the kernel tests in network namespaces (needs root). Extra arguments go to pytest.
# The pyroute2-using tests run a second time under pyroute2 0.7.9, what OpenWrt 24.10
# ships (the main venv has the current 0.9.x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests bench
make -s bpf
.venv/bin/pytest "$@"

old=.venv-pyroute2-0.7.9
if [ ! -x "$old/bin/pytest" ]; then
	/usr/bin/python3 -m venv "$old"
	"$old/bin/pip" install -q pyroute2==0.7.9 'psutil>=5.9' pytest hypothesis
	"$old/bin/pip" install -q --no-deps -e .
fi
echo "== pyroute2 $("$old/bin/python" -c 'import pyroute2; print(pyroute2.__version__)')"
"$old/bin/pytest" -q tests/test_tc_kernel.py tests/test_probe.py tests/test_plan.py
