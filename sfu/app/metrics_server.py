"""``/metrics`` and ``/healthz`` for a process without an HTTP app (the ``sfu worker``
process), served on the caller's event loop (see :mod:`sfu.metrics.exposition`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from sfu.app.http_server import Server
from sfu.metrics.exposition import render

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def metrics_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A bare ASGI app: ``GET /metrics`` and ``GET /healthz``, 404 for anything else."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/metrics":
        body, content_type = render()
        status = 200
    elif scope["path"] == "/healthz":
        body, content_type, status = b'{"status":"ok"}', "application/json", 200
    else:
        body, content_type, status = b"not found\n", "text/plain", 404
    headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def metrics_server(host: str, port: int) -> Server:
    """A server for :func:`metrics_app`, for a process that has no other HTTP app.

    The Redis deployment's ``sfu worker`` process runs it next to its worker::

        metrics = WorkerMetrics(worker)
        metrics.start()
        server = metrics_server(settings.host, metrics_port)
        await server.serve()  # or asyncio.create_task(server.serve())

    It runs on the caller's event loop (see the module docstring).
    """
    config = uvicorn.Config(metrics_app, host=host, port=port, log_level="warning", lifespan="off")
    return Server(config)
