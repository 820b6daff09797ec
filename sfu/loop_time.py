"""The event loop's CPU time, with the interpreter's garbage collection left out.

A full (generation 2) collection walks every tracked object of the process: with
aiortc, FastAPI and pydantic imported that is about 90,000 objects and 40-50 ms of CPU
on this machine, a pause every room on the worker feels and that lands inside whatever
handler happens to allocate at that moment. Two things follow:

- :func:`settle_heap`, called once a process has started serving, moves everything
  allocated so far (modules, classes, the app) into the permanent generation
  (:func:`gc.freeze`), so later full collections walk only what rooms create: the same
  collection then takes microseconds.
- :func:`loop_cpu_time` is the thread's CPU time minus what collections took, so a
  handler timed with it (:mod:`sfu.rtcp_budget`) is charged for its own work, not for a
  collection that started while it ran.
"""

from __future__ import annotations

import gc
import time
from typing import Any


class _CollectionClock:
    """Sums the CPU seconds of every garbage collection (a :data:`gc.callbacks` hook)."""

    __slots__ = ("_started", "seconds")

    def __init__(self) -> None:
        self._started = 0.0
        self.seconds = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started


_collections = _CollectionClock()


def settle_heap() -> None:
    """Freeze the startup heap out of later collections and start timing collections.
    Idempotent: a second call freezes what was allocated since and adds no hook."""
    gc.collect()
    gc.freeze()
    if _collections not in gc.callbacks:
        gc.callbacks.append(_collections)


def loop_cpu_time() -> float:
    """CPU seconds of this thread outside garbage collection (only collections after
    :func:`settle_heap` are left out)."""
    return time.thread_time() - _collections.seconds
