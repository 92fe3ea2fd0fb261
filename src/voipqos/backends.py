"""Choose the shaping backend named in the config (what cli.py and daemon.py call)."""

from __future__ import annotations

from .config import Config
from .htb import DEFAULT_PIN_DIR, HtbProfile
from .profile import Profile
from .sqm import SqmProfile


def make_profile(cfg: Config, device: str, pin_dir: str = DEFAULT_PIN_DIR) -> Profile:
    """The profile for `device`; nothing touches the kernel until apply()/remove()."""
    if cfg.backend == "sqm":
        return SqmProfile(cfg, device, pin_dir)
    return HtbProfile(cfg, device, pin_dir)
