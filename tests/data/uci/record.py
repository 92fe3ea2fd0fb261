#!/usr/bin/env python3
"""Record what the real `uci` CLI (openwrt/uci, strict mode as on a router) makes of each
cases/NAME.conf: `uci -c DIR show voipqos` into cases/NAME.show, or its parse error as
`ERROR line N: reason`. test_config.py replays these against voipqos.uci.

    UCI=/work/upstream/prefix/bin/uci LD_LIBRARY_PATH=/work/upstream/prefix/lib \\
        python3 tests/data/uci/record.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CASES = Path(__file__).parent / "cases"


def record(uci: str, conf: Path) -> str:
    with tempfile.TemporaryDirectory() as confdir:
        shutil.copy(conf, Path(confdir, "voipqos"))
        res = subprocess.run([uci, "-c", confdir, "show", "voipqos"], capture_output=True,
                             timeout=10)
    if res.returncode == 0:
        return res.stdout.decode("latin-1")
    err = res.stderr.decode("latin-1").strip()
    m = re.search(r"Parse error \((.*)\) at line (\d+), byte \d+", err)
    if not m:
        return f"ERROR {err}\n"
    return f"ERROR line {m.group(2)}: {m.group(1)}\n"


def main() -> None:
    uci = os.environ.get("UCI", "uci")
    version = subprocess.run([uci, "-h"], capture_output=True, text=True).stderr
    if "Usage: " not in version:
        raise SystemExit(f"{uci} is not the uci CLI")
    for conf in sorted(CASES.glob("*.conf")):
        conf.with_suffix(".show").write_text(record(uci, conf), encoding="latin-1")
        print(conf.stem)


if __name__ == "__main__":
    main()
