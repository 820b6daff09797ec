"""Run a transport's signaling operations one after another."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SerialQueue:
    """Runs submitted coroutine functions strictly in submission order."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: asyncio.Queue[
            tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any] | None]
        ] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=name)

    def submit(self, operation: Callable[[], Awaitable[None]]) -> None:
        """Queue ``operation``; an exception it raises is logged. Ignored once closed."""
        if not self._task.done():
            self._queue.put_nowait((operation, None))

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Queue ``operation`` and return its result (or raise its exception)."""
        if self._task.done():
            raise RuntimeError(f"{self._name} is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((operation, future))
        return await future

    async def close(self) -> None:
        """Stop: the running operation and the queued ones are cancelled."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if future is not None:
                future.cancel()

    async def _run(self) -> None:
        while True:
            operation, future = await self._queue.get()
            try:
                result = await operation()
            except asyncio.CancelledError:
                if future is not None:
                    future.cancel()
                raise
            except Exception as exc:
                if future is None:
                    logger.exception("%s: operation failed", self._name)
                elif not future.done():
                    future.set_exception(exc)
            else:
                if future is not None and not future.done():
                    future.set_result(result)
