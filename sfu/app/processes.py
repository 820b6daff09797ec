"""The two cluster processes: ``sfu signaling`` (stateless FastAPI node) and
``sfu worker`` (one media worker on uvloop), both talking to Redis.

Either process starts without Redis and waits for it: a worker serves nobody until
it can register, and a signaling node answers joins with ``worker_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable

from sfu.app.http_server import Server, server_config
from sfu.app.metrics_server import metrics_server
from sfu.cluster.backend import BackendUnavailable
from sfu.cluster.redis_backend import RedisBackend
from sfu.cluster.router import ClusterRouter
from sfu.cluster.rpc import RpcClient
from sfu.cluster.worker_service import WorkerService
from sfu.config import Settings
from sfu.loop_time import settle_heap
from sfu.metrics import WorkerMetrics
from signaling.app import create_app

logger = logging.getLogger(__name__)

STARTUP_RETRY_SECONDS = 0.5


def new_id(prefix: str) -> str:
    return f"{prefix}-{socket.gethostname()}-{secrets.token_hex(3)}"


async def _until_connected(start: Callable[[], Awaitable[None]], what: str) -> None:
    """Await ``start()`` until the store answers (Redis may come up after us)."""
    while True:
        try:
            await start()
            return
        except BackendUnavailable as exc:
            logger.warning("%s: waiting for Redis: %s", what, exc)
            await asyncio.sleep(STARTUP_RETRY_SECONDS)


async def run_signaling(settings: Settings) -> None:
    """Serve HTTP and ``/ws`` with a :class:`ClusterRouter` until SIGTERM/SIGINT."""
    node_id = settings.node_id or new_id("node")
    backend = RedisBackend(settings.redis_url)
    router = ClusterRouter(settings, backend, node_id)
    await _until_connected(router.start, f"signaling node {node_id}")
    config = server_config(create_app(router, settings, router), settings)
    logger.info("signaling node %s on %s:%d", node_id, settings.host, settings.port)
    settle_heap()
    try:
        await Server(config).serve()
    finally:
        await router.stop()
        await backend.close()


async def run_worker(settings: Settings) -> None:
    """Serve one media worker until SIGINT, or until drained after SIGTERM."""
    worker_id = settings.worker_id or new_id("worker")
    backend = RedisBackend(settings.redis_url)
    service = WorkerService(settings, backend, worker_id)
    await _until_connected(service.start, f"worker {worker_id}")
    settle_heap()
    metrics = WorkerMetrics(service.worker)
    metrics.start()
    metrics_http = _serve_metrics(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, service.drain)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    finished = asyncio.create_task(service.finished.wait())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((finished, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished.cancel()
        stopped.cancel()
        logger.info("worker %s stopping", worker_id)
        if metrics_http is not None:
            server, task = metrics_http
            server.request_exit()
            await task
        await metrics.stop()
        await service.stop()
        await backend.close()


def _serve_metrics(settings: Settings) -> tuple[Server, asyncio.Task[None]] | None:
    """``/metrics`` and ``/healthz`` of a worker process on ``settings.metrics_port``.

    The socket is bound here, not by uvicorn: uvicorn exits the process when its bind
    fails, and a worker must keep forwarding media with its metrics port taken (it
    logs the problem instead).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.metrics_port))
    except OSError as exc:
        sock.close()
        logger.warning("no /metrics on port %d: %s", settings.metrics_port, exc)
        return None
    server = metrics_server(settings.host, settings.metrics_port)
    return server, asyncio.create_task(server.serve(sockets=[sock]))


async def drain_worker(settings: Settings, worker_id: str, timeout: float | None) -> None:
    """Ask a running worker to drain (what ``POST /api/workers/{id}/drain`` does)."""
    backend = RedisBackend(settings.redis_url)
    client = RpcClient(backend, new_id("drain"), settings.rpc_timeout)
    try:
        await client.start()
        await client.call(worker_id, "drain", timeout=timeout)
    finally:
        with contextlib.suppress(BackendUnavailable):
            await client.stop()
        await backend.close()
