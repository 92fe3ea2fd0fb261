"""The service process around a Daemon: one daemon per run_dir (pid lock), signals
(SIGTERM/SIGINT stop, SIGHUP reload), the endpoints, and the loop that polls on a
drift-free grid and serves requests in between. Whatever the daemon applied is removed
before the lock is released, on every way out."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

from . import __version__
from .daemon import Daemon, ReloadRejected

log = logging.getLogger("voipqos")

WATCH_INTERVAL = 0.25  # while shaping, look for kernel changes this often between polls


class AlreadyRunning(RuntimeError):
    pass


@contextlib.contextmanager
def pid_lock(run_dir: str, wait: float = 0.0):
    """One daemon per run_dir: an flock on the pid file, released when we exit. `apply`
    and `remove` take it too, so nothing changes the device under a running daemon;
    `wait` is how long to wait for a holder that is shutting down (procd does not wait)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path = Path(run_dir, "voipqos.pid")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    other = os.pread(fd, 32, 0).decode().strip() or "?"
                    raise AlreadyRunning(
                        f"voipqos is already running (pid {other}, {path})") from exc
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class Waiter:
    """Sleeps until the next poll unless woken by a signal (no endpoint configured)."""

    def __init__(self, wake_fd: int) -> None:
        self.wake_fd = wake_fd

    def wait(self, timeout: float) -> None:
        select.select([self.wake_fd], [], [], timeout)

    def send_event(self, event: str, data: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def make_endpoints(d: Daemon, wake_fd: int):
    """The JSON-RPC endpoint (and ubus when python-ubus is importable)."""
    try:
        import ubus  # noqa: F401  (python-ubus, on OpenWrt)

        use_ubus = True
    except ImportError:
        use_ubus = False
    if not d.cfg.rpc_listen and not use_ubus:
        return Waiter(wake_fd)
    from .endpoints import Endpoints

    return Endpoints(d.dispatcher(), d.cfg.rpc_listen, str(Path(d.cfg.run_dir, "rpc.secret")),
                     use_ubus, wake_fd)


def _until(d: Daemon, next_poll: float) -> float:
    """Seconds to wait: the next poll, a switching deadline, or the next look at the
    kernel while shaping (a lost IFB blackholes download traffic until restored)."""
    now = d.clock()
    wake = next_poll
    if d.switch.active:
        wake = min(wake, now + WATCH_INTERVAL)
    deadline = d.switch.next_deadline()
    if deadline is not None:  # never a spin, whatever the deadline says
        wake = min(wake, max(deadline, now + WATCH_INTERVAL / 5))
    return max(0.0, wake - now)


def run(d: Daemon) -> int:
    """The loop: polls on a drift-free grid, endpoints served in between."""
    flags = {"stop": False, "reload": False}

    def on_stop(signum: int, frame: object) -> None:
        flags["stop"] = True

    def on_hup(signum: int, frame: object) -> None:
        flags["reload"] = True

    rsock, wsock = socket.socketpair()
    rsock.setblocking(False)
    wsock.setblocking(False)
    old_wake = signal.set_wakeup_fd(wsock.fileno())
    handlers = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    endpoints = None
    try:
        with pid_lock(d.cfg.run_dir), contextlib.ExitStack() as held:
            # on any way out, before the lock is released: `voipqos remove --wait` (the
            # init script's stop) then finds nothing left, and a second daemon refused
            # the lock never removes the running one's profile
            held.callback(d.shutdown)
            d.shutdown()  # a predecessor killed with -9 may have left its profile
            endpoints = make_endpoints(d, rsock.fileno())
            d.send_event = endpoints.send_event
            log.info("voipqos %s watching conntrack every %g s, shaping %s (%s backend)",
                     __version__, d.cfg.poll_interval, d.device, d.profile.name)
            start = d.clock()
            n = 0
            while not flags["stop"]:
                now = d.clock()
                if now >= start + n * d.cfg.poll_interval:
                    d.poll(now)
                    # drift-free: the next slot on the grid, skipping any we overran
                    n = int((d.clock() - start) / d.cfg.poll_interval) + 1
                elif d.switch.active or d.switch.next_deadline() is not None:
                    d.tend(now)
                if flags["reload"]:
                    flags["reload"] = False
                    with contextlib.suppress(ReloadRejected):
                        d.reload()
                endpoints.wait(_until(d, start + n * d.cfg.poll_interval))
                with contextlib.suppress(BlockingIOError):
                    while rsock.recv(512):
                        pass
            log.info("stopping: removing the profile")
    finally:
        if endpoints is not None:
            endpoints.close()
        signal.set_wakeup_fd(old_wake)
        for s, h in handlers.items():
            signal.signal(s, h)
        rsock.close()
        wsock.close()
    return 0
