#!/bin/bash
# The README's first command: set up this Debian 12 machine (as root; idempotent), then run
# the end-to-end lab: a SIP call under a saturated line without voipqos, with voipqos in
# auto mode and with the profile forced on, side by side. Arguments go to voipqos-lab
# (e.g. --quick, --out DIR, --up/--down KBIT, --buffer-ms MS).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run as root (network namespaces, tc, nft)" >&2
	exit 2
fi
scripts/setup.sh
exec .venv/bin/voipqos-lab "$@"
