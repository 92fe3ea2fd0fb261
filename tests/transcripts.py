"""Conformance transcripts recorded from the real OpenWrt parts (tests/realstack/record.py)
and the helpers that replay them against the project's doubles."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DIR = Path(__file__).parent / "data/transcripts"
SID = "<sid>"
STATUS = {"Invalid argument": 2, "Method not found": 3, "Not found": 4,
          "Unknown error": 9}


def load(name: str) -> Any:
    return json.loads((DIR / f"{name}.json").read_text())


def cli_status(row: dict[str, Any]) -> int:
    """The ubus status of a recorded `ubus call`, from the CLI's error line."""
    if not row["stderr"]:
        return 0
    m = re.search(r"\(([^()]+)\)$", row["stderr"]) or re.search(r"failed: (.+)$",
                                                                 row["stderr"])
    return STATUS[m.group(1)]


def request_body(entry: dict[str, Any], sid: str) -> bytes:
    req = entry["request"]
    text = req if isinstance(req, str) else json.dumps(req)
    return text.replace(SID, sid).encode()


def normalized(reply: Any, sid: str | None) -> Any:
    text = json.dumps(reply)
    return json.loads(text.replace(sid, SID)) if sid else reply


def login_shape(reply: dict[str, Any]) -> tuple:
    """What of a login answer does not depend on the router's other ACL files."""
    status, data = reply["result"][0], reply["result"][1]
    return (status, sorted(data), sorted(data["acls"]["ubus"]["voipqos"]),
            data["acls"]["access-group"]["voipqos"], data["data"])
