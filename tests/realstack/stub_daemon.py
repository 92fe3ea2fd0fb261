"""voipqos.daemon on the real python-ubus with the tests' stub handlers (test_rpc's
stub_dispatcher), so recorded answers are the same ones the doubles give in CI."""

from __future__ import annotations

import logging
import sys

import ubus  # python-ubus 0.1.3 from VOIPQOS_UPSTREAM's venv

from test_rpc import stub_dispatcher
from voipqos.ubus import UbusObject

logging.basicConfig(stream=sys.stderr, format="%(levelname)s: %(message)s")
obj = UbusObject(stub_dispatcher(), ubus)
print("registered", flush=True)
while True:
    ubus.loop(1000)
