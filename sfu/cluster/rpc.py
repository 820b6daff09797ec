"""Requests from a signaling node to a worker, and their replies, over the bus.

A request is one JSON object published on ``worker:{id}``: ``{"id", "reply_to",
"method", "params"}``; the reply is published on the caller's ``node:{id}`` channel:
``{"id", "result"}`` or ``{"id", "error": {"code", "message"}}``. Nobody listening on
the worker's channel means the worker is gone, which fails the call at once; a
worker that listens but does not answer fails it after the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sfu.cluster.backend import (
    BackendUnavailable,
    ClusterBackend,
    Subscription,
    node_channel,
    worker_channel,
)
from sfu.protocol import ErrorCode
from sfu.worker_api import ProtocolError

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How long one subscription read waits before the loop checks for shutdown."""

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Serves one request: ``(method, params)`` → a JSON-serialisable result."""


async def _messages(subscription: Subscription, what: str) -> AsyncIterator[str]:
    """Every message of ``subscription``, forever. A failed read is logged and tried
    again: ending the loop would leave its owner deaf (a signaling node to replies, a
    worker, still registered, to requests)."""
    while True:
        try:
            data = await subscription.get(POLL_SECONDS)
        except Exception:
            logger.exception("reading %s failed", what)
            await asyncio.sleep(POLL_SECONDS)
            continue
        if data is not None:
            yield data


class WorkerGone(ProtocolError):
    """Nobody listens on the worker's channel: the process is dead or cut off."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(ErrorCode.WORKER_UNAVAILABLE, f"media worker {worker_id} is gone")
        self.worker_id = worker_id


class RpcClient:
    """Calls workers for one signaling node and matches their replies."""

    def __init__(self, backend: ClusterBackend, node_id: str, timeout: float) -> None:
        self._backend = backend
        self._node_id = node_id
        self._timeout = timeout
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subscription = await self._backend.subscribe(node_channel(self._node_id))
        self._task = asyncio.create_task(self._read(self._subscription), name="rpc-replies")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            await self._subscription.close()

    async def call(self, worker_id: str, method: str, **params: Any) -> Any:
        """The worker's result; raises :class:`ProtocolError` (the worker's own, or
        ``worker_unavailable`` when it is gone, unreachable or too slow)."""
        request_id = secrets.token_hex(8)
        request = {"id": request_id, "reply_to": self._node_id, "method": method, "params": params}
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            try:
                receivers = await self._backend.publish(
                    worker_channel(worker_id), json.dumps(request)
                )
            except BackendUnavailable as exc:
                raise ProtocolError(
                    ErrorCode.WORKER_UNAVAILABLE, f"cannot reach the cluster store: {exc}"
                ) from exc
            if receivers == 0:
                raise WorkerGone(worker_id)
            try:
                async with asyncio.timeout(self._timeout):
                    reply = await future
            except TimeoutError:
                raise ProtocolError(
                    ErrorCode.WORKER_UNAVAILABLE,
                    f"media worker {worker_id} did not answer {method} in {self._timeout:g} s",
                ) from None
        finally:
            self._pending.pop(request_id, None)
        error = reply.get("error")
        if error is not None:
            raise ProtocolError(ErrorCode(error["code"]), str(error["message"]))
        return reply.get("result")

    async def _read(self, subscription: Subscription) -> None:
        async for data in _messages(subscription, "replies"):
            try:
                reply = json.loads(data)
                future = self._pending.get(reply["id"])
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring a malformed reply %.200r", data)
                continue
            if future is not None and not future.done():
                future.set_result(reply)


class RpcServer:
    """Serves a worker's channel: each request runs as its own task."""

    def __init__(self, backend: ClusterBackend, worker_id: str, handler: Handler) -> None:
        self._backend = backend
        self._worker_id = worker_id
        self._handler = handler
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._subscription is not None and self._subscription.active

    async def start(self) -> None:
        self._subscription = await self._backend.subscribe(worker_channel(self._worker_id))
        self._task = asyncio.create_task(self._read(self._subscription), name="rpc-requests")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            await self._subscription.close()
        for task in list(self._requests):
            task.cancel()

    async def _read(self, subscription: Subscription) -> None:
        async for data in _messages(subscription, "requests"):
            try:
                request = json.loads(data)
                request_id, reply_to = str(request["id"]), str(request["reply_to"])
                method, params = str(request["method"]), dict(request["params"])
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring a malformed request %.200r", data)
                continue
            task = asyncio.create_task(self._serve(request_id, reply_to, method, params))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    async def _serve(
        self, request_id: str, reply_to: str, method: str, params: dict[str, Any]
    ) -> None:
        reply: dict[str, Any] = {"id": request_id}
        try:
            reply["result"] = await self._handler(method, params)
        except ProtocolError as exc:
            reply["error"] = {"code": exc.code.value, "message": exc.message}
        except Exception:
            logger.exception("request %s failed", method)
            reply["error"] = {"code": ErrorCode.INTERNAL.value, "message": "internal error"}
        try:
            await self._backend.publish(node_channel(reply_to), json.dumps(reply))
        except BackendUnavailable as exc:
            logger.warning("cannot reply to %s (%s): %s", reply_to, method, exc)
