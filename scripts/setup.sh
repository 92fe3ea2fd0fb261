#!/bin/bash
# Set up this machine for voipqos (Debian 12, as root): the Debian packages listed in
# scripts/apt-packages.txt, then a virtualenv .venv with voipqos and its test/lab extras.
# Safe to run again: it only installs what is missing.
set -eu
cd "$(dirname "$0")/.."

pkgs=$(grep -v '^\s*#' scripts/apt-packages.txt | tr '\n' ' ')
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "setup: installing Debian packages:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $missing
fi

# Debian's python3 (3.11 on Debian 12), so the set-up does not depend on what else is on PATH
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
	echo "setup: creating .venv"
	"$PY" -m venv .venv
fi
stamp=.venv/.voipqos-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[test,lab]'
	touch "$stamp"
fi
echo "setup: ok"
