"""uvicorn's server, waking once a second for its housekeeping instead of ten times.

``uvicorn.Server`` runs a main loop that sleeps 0.1 s between checks for an exit
request (and refreshes its ``Date`` header every tenth time). In a process that also
forwards media those ten timer wake-ups per second cost more than the checks: on a
virtual machine the wake-up of an idle process is its most expensive part (the
benchmark's ``wake-ups/s`` column). :class:`Server` checks once a second, and an exit
request (a signal, or :meth:`Server.request_exit`) wakes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType

import uvicorn

TICK_SECONDS = 1.0
_TICKS_PER_DATE = 10
"""uvicorn refreshes its ``Date`` header when its tick counter is a multiple of 10."""


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + _TICKS_PER_DATE) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
            self._wake.clear()
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._wake_main_loop()

    def request_exit(self) -> None:
        """Stop serving, as a signal would (``should_exit = True`` alone waits up to
        a second for the next tick)."""
        self.should_exit = True
        self._wake_main_loop()

    def _wake_main_loop(self) -> None:
        # A signal handler runs between two bytecodes of whatever the loop runs:
        # only the thread-safe way into the loop is safe there.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
