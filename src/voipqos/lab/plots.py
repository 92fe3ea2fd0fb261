"""The lab's two figures (matplotlib, Agg: no display needed): call latency over time for
every scenario on one chart with the auto profile's on/off moments, and latency CDFs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"none": "tab:red", "auto": "tab:blue", "forced": "tab:green"}


def _rtts(res: dict[str, Any], start: float | None = None) -> tuple[list[float], list[float]]:
    pts = [(t, rtt) for t, rtt, _up, _down in res["series"]
           if rtt is not None and (start is None or t >= start)]
    return [p[0] for p in pts], [p[1] for p in pts]


def latency_over_time(results: list[dict[str, Any]], path: Path, subtitle: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    for res in results:
        xs, ys = _rtts(res)
        ax.plot(xs, ys, lw=0.9, color=COLORS.get(res["name"]), label=res["title"])
        prof = res.get("profile") or {}
        first = res["call"]["first_media"]
        for key, text in (("on_at", "profile on"), ("off_at", "profile off")):
            if prof.get(key) is not None:
                x = prof[key] - first
                ax.axvline(x, color=COLORS.get(res["name"]), ls="--", lw=1)
                ax.annotate(text, (x, 0.97), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize=8)
        ax.axvline(res["call"]["end"] - first, color=COLORS.get(res["name"]), ls=":", lw=1)
    ax.set_yscale("log")
    _finish(fig, ax, path, "seconds since the call's first media packet (dotted: call end)",
            "VoIP round-trip time, ms (irtt, log scale)",
            f"Call latency under a saturated line\n{subtitle}", "center right")


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc=legend)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latency_cdf(results: list[dict[str, Any]], path: Path, subtitle: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for res in results:
        curves = [(res["title"], None, "-")]
        on_at = (res.get("profile") or {}).get("on_at")
        if on_at is not None:
            curves.append((f"{res['title']} (profile on)", on_at - res["call"]["first_media"],
                           "--"))
        for label, start, ls in curves:
            ys = sorted(_rtts(res, start)[1])
            if ys:
                ax.plot(ys, [(i + 1) / len(ys) for i in range(len(ys))], ls=ls,
                        color=COLORS.get(res["name"]), label=label)
    ax.set_xscale("log")
    _finish(fig, ax, path, "VoIP round-trip time, ms (log scale)", "fraction of packets",
            f"Latency CDF\n{subtitle}", "lower right")
