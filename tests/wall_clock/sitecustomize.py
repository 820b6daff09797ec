"""Loaded by a server the wall-clock test starts (``PYTHONPATH`` names this folder):
``time.time`` reads the real wall clock plus an offset that each SIGUSR1 moves by
``WALL_CLOCK_STEP`` seconds, as an NTP step or an operator's ``date -s`` would move it
(the monotonic clock does not move)."""

import os
import signal
import time

_real_time = time.time
_offset = 0.0


def _stepped_time() -> float:
    return _real_time() + _offset


def _step(signum: int, frame: object) -> None:
    global _offset
    _offset += float(os.environ["WALL_CLOCK_STEP"])


time.time = _stepped_time
signal.signal(signal.SIGUSR1, _step)
