#!/usr/bin/env python3
"""Differential corpus: seeded random UCI files built from the syntax's tricky pieces
(quotes that span lines, escapes, `;`, `#`, abbreviations, repeated sections, CRLF),
each with what the real `uci show` made of it, into random.json; test_config.py replays
them against voipqos.uci. Same invocation as record.py (UCI=... LD_LIBRARY_PATH=...)."""

from __future__ import annotations

import base64
import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from record import record

COUNT = 400
WORDS = ["voipqos", "main", "other", "x", "up_load", "a", "b", "1", "", "é", "a b", "x-y",
         "@v", "5060"]
PIECES = ["'", '"', "\\", "\\\n", "#", ";", " ", "\t", "\n", "\r\n", "'\\''", "a", "b"]


def word(rng: random.Random) -> str:
    w = rng.choice(WORDS)
    style = rng.randrange(10)
    if style < 3:
        return f"'{w}'"
    if style < 5:
        return '"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if style == 5 and rng.random() < 0.5:
        return w + "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 2)))
    return w.replace(" ", "\\ ") if w else "''"


def line(rng: random.Random) -> str:
    kind = rng.choice(["config", "c", "option", "o", "list", "l", "#", "package"]
                      + ["option", "list"] * 6 + ["set"] * (rng.random() < 0.1))
    if kind in ("option", "o", "list", "l") and rng.random() < 0.8:
        args = [rng.choice(["upload", "a", "b", "sip_ports"]), word(rng)]
    elif kind in ("config", "c") and rng.random() < 0.8:
        args = [rng.choice(["voipqos", "other"]), rng.choice(["main", "x", "''", "y"])]
    else:
        args = [word(rng) for _ in range(rng.choice([0, 1, 2, 2, 3]))]
    lead = rng.choice(["", "\t", "  "])
    tail = rng.choice(["", "", "", "", "", "", " # c", ";", "; option a 1", ";o b 2", " "])
    return lead + " ".join([kind, *args]) + tail


def config(rng: random.Random) -> bytes:
    lines = ["config voipqos 'main'"] if rng.random() < 0.95 else []
    lines += [line(rng) for _ in range(rng.randint(1, 6))]
    eol = "\r\n" if rng.random() < 0.1 else "\n"
    text = eol.join(lines) + (eol if rng.random() < 0.9 else "")
    return text.encode()


def main() -> None:
    import tempfile

    uci = os.environ.get("UCI", "uci")
    rng = random.Random(16)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(COUNT):
            data = config(rng)
            path = Path(tmp, "voipqos.conf")
            path.write_bytes(data)
            cases.append({"conf": base64.b64encode(data).decode(),
                          "show": record(uci, path)})
    (Path(__file__).parent / "random.json").write_text(json.dumps(cases, indent=0) + "\n")
    print(len(cases), sum(c["show"].startswith("ERROR") for c in cases), "errors")


if __name__ == "__main__":
    main()
