"""The detector on the real-capture corpus next to a baseline detector, same snapshots.

    .venv/bin/python bench/detect_corpus.py [--baseline REV] [--markdown]

Scores this tree's `detect.py` and the one at git revision REV (default 4ec40bc: the
single-interval detector before issue 10) on tests/data/captures and its `shift-0.5/`
replay with the same scoring (src/voipqos/lab/replay_eval.py: Detector + the real
Hysteresis, default config): calls found, share of active call seconds with the profile
on, delay, switch-ons and seconds on for the non-call captures, flows wrongly called
media; plus the time to score the corpus. This tree is scored twice: from conntrack alone
(what `voipqos analyze` sees, the daemon without its observer) and with the tc-BPF
observer's RTP/STUN header counts (computed from the plans' 12-byte heads). The baseline
runs in a copy of this tree with only detect.py taken from REV, without headers.
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
CORPUS = ROOT / "tests" / "data" / "captures"

SCORE = """
import sys, time
from pathlib import Path
from voipqos.lab import replay_eval
kw = {'headers': True} if '--headers' in sys.argv else {}
t = time.perf_counter()
scores = replay_eval.evaluate(Path(sys.argv[1]), **kw)
took = time.perf_counter() - t
print(replay_eval.markdown(scores) if '--markdown' in sys.argv else replay_eval.table(scores))
print(f"scored {len(scores)} captures in {took:.1f} s")
"""


def score(src: Path, directory: Path, markdown: bool, headers: bool = False) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    args = [sys.executable, "-c", SCORE, str(directory),
            *(["--markdown"] if markdown else []), *(["--headers"] if headers else [])]
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
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "src"
        shutil.copytree(ROOT / "src" / "voipqos", base / "voipqos")
        (Path(tmp) / "tests").symlink_to(ROOT / "tests")  # the copy's corpus is ours
        old = subprocess.run(["git", "show", f"{a.baseline}:src/voipqos/detect.py"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        (base / "voipqos" / "detect.py").write_text(old)
        for phase in (CORPUS, CORPUS / "shift-0.5"):
            print(f"\n##### {phase.relative_to(ROOT)}")
            print("== this tree, conntrack only (no observer)")
            print(score(ROOT / "src", phase, a.markdown))
            print("== this tree, with the observer's RTP/STUN header counts")
            print(score(ROOT / "src", phase, a.markdown, headers=True))
            print(f"== baseline: detect.py at {a.baseline}")
            print(score(base, phase, a.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
