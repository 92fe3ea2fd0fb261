"""The child process behind tc.Tc(): imports pyroute2 so the service does not.

Reads pickled (method, args) from stdin, runs them on one tc.Kernel over one IPRoute
(or, for "kernel_features", the probe's tries), writes pickled (ok, value or exception)
to stdout. Exits on end of input or after tc.WORKER_ORPHAN_S without a call. Kernel
refusals leave as ProfileError so the caller never needs pyroute2 to unpickle them.
"""

from __future__ import annotations

import logging
import pickle
import select
import sys
from typing import Any

from .tc import WORKER_ORPHAN_S, Kernel, _netlink_error, refusal


def handle(kernel: Kernel, method: str, args: tuple) -> Any:
    if method == "kernel_features":
        from .probe import _kernel

        return _kernel(kernel.ipr)
    return getattr(kernel, method)(*args)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="voipqos tc worker: %(message)s")
    from pyroute2 import IPRoute

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    kernel = Kernel(IPRoute())
    kernel_error = _netlink_error()
    try:
        while select.select([inp], [], [], WORKER_ORPHAN_S)[0]:
            try:
                method, args = pickle.load(inp)
            except EOFError:
                break
            try:
                answer: tuple[bool, Any] = (True, handle(kernel, method, args))
            except kernel_error as exc:
                answer = (False, refusal(method, args, exc))
            except Exception as exc:  # a bug: its type goes back
                logging.exception("%s failed", method)
                answer = (False, exc)
            try:
                data = pickle.dumps(answer)
            except (pickle.PicklingError, TypeError, AttributeError):
                data = pickle.dumps((False, RuntimeError(repr(answer[1]))))
            out.write(data)
            out.flush()
    finally:
        kernel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
