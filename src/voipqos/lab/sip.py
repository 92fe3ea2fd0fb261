"""A real SIP call with baresip: headless, auto-answer on the far end, PCMU/20 ms from a
generated tone, and the rtcpsummary module's end-of-call line for loss and jitter.

The audio sink is aubridge (a sink that does not spin: ALSA's null device burns about half
a core per baresip), the source aufile (baresip sends silence if the file ends, so the
file is made longer than the call).
"""

from __future__ import annotations

import math
import re
import struct
import wave
from pathlib import Path
from typing import Any

RTP_PORTS = (20000, 20100)
MODULES = ("g711.so", "aufile.so", "aubridge.so", "rtcpsummary.so")


def write_tone(path: Path, seconds: float, hz: float = 440.0, rate: int = 8000) -> None:
    """An 8 kHz mono 16-bit sine, the input a narrowband call expects."""
    n = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / rate)))
                      for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def write_profile(directory: Path, user: str, addr: str, tone: Path, answer: bool) -> Path:
    """A baresip config dir (`-f DIR`) for one party listening on addr:5060."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"sip_listen {addr}:5060",
             "audio_player aubridge,null",
             "audio_alert aubridge,null",
             f"audio_source aufile,{tone}",
             f"rtp_ports {RTP_PORTS[0]}-{RTP_PORTS[1]}",
             "module_path /usr/lib/baresip/modules",
             *(f"module {m}" for m in MODULES),
             "module_app account.so",
             "module_app menu.so"]
    (directory / "config").write_text("\n".join(lines) + "\n")
    mode = ";answermode=auto" if answer else ""
    (directory / "accounts").write_text(
        f"<sip:{user}@{addr}>;regint=0{mode};audio_codecs=PCMU\n")
    return directory


def caller_cmd(directory: Path, seconds: int, callee: str) -> list[str]:
    """Dial, talk for `seconds`, hang up and quit."""
    return ["baresip", "-f", str(directory), "-t", str(seconds), "-e", f"/dial {callee}"]


def callee_cmd(directory: Path) -> list[str]:
    return ["baresip", "-f", str(directory)]


_SUMMARY = re.compile(r"EX=BareSip;(\S+)")


def parse_rtcpsummary(text: str) -> dict[str, Any] | None:
    """The last `EX=BareSip;…` line (RTCP-XR style, RFC 6035 names) → packets, loss and
    jitter per direction as seen by the party that printed it. rx is what it received,
    tx what its peer reported receiving."""
    found = _SUMMARY.findall(text)
    if not found:
        return None
    fields = dict(kv.split("=", 1) for kv in found[-1].split(";") if "=" in kv)

    def pair(key: str) -> list[float]:
        return [float(x) for x in fields.get(key, "nan,nan").split(",")]

    lost_rx, lost_tx = pair("PL")
    jit_rx, jit_tx = pair("JI")
    return {"duration_s": float(fields.get("CD", "nan")),
            "packets_rx": float(fields.get("PR", "nan")),
            "packets_tx": float(fields.get("PS", "nan")),
            "lost_rx": lost_rx, "lost_tx": lost_tx,
            "jitter_rx_ms": jit_rx, "jitter_tx_ms": jit_tx}
