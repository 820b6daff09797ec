"""Serving ``/metrics``: the body for the signaling app's route, and a standalone
server for processes without an HTTP app (the ``sfu worker`` process).

Collection walks the media worker's objects, so it must run on the worker's event
loop thread: both the FastAPI route (an ``async def``) and :func:`serve_metrics` do.
prometheus_client's own ``start_http_server`` would collect from another thread and
race the packet path, so it is not used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from sfu.http_server import Server

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def render() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


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
