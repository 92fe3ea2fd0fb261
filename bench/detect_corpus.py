"""The detector on the real-capture corpus next to a baseline detector, same snapshots.

    .venv/bin/python bench/detect_corpus.py [--baseline REV] [--markdown]

Scores this tree's `detect.py` and the one at git revision REV (default 4ec40bc: the
single-interval detector before issue 10) on tests/data/captures with the same scoring
(src/voipqos/lab/replay_eval.py: Detector + the real Hysteresis, default config): calls
found, share of active call seconds with the profile on, delay, switch-ons and seconds
on for the non-call captures, flows wrongly called media; plus the time to score the
corpus. The baseline runs in a copy of this tree with only detect.py taken from REV.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCORE = """
import sys, time
from pathlib import Path
from voipqos.lab import replay_eval
t = time.perf_counter()
scores = replay_eval.evaluate(Path(sys.argv[1]))
took = time.perf_counter() - t
print(replay_eval.markdown(scores) if '--markdown' in sys.argv else replay_eval.table(scores))
print(f"scored {len(scores)} captures in {took:.1f} s")
"""


def score(src: Path, markdown: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    args = [sys.executable, "-c", SCORE, str(ROOT / "tests" / "data" / "captures"),
            *(["--markdown"] if markdown else [])]
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="4ec40bc")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    print(f"machine: {platform.node()}, {cpu}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print("\n== this tree")
    print(score(ROOT / "src", a.markdown))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "src" / "voipqos", Path(tmp) / "voipqos")
        old = subprocess.run(["git", "show", f"{a.baseline}:src/voipqos/detect.py"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        (Path(tmp) / "voipqos" / "detect.py").write_text(old)
        print(f"== baseline: detect.py at {a.baseline}")
        print(score(Path(tmp), a.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
