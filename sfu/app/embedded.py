"""The embedded server's app: the signaling app with an in-process media worker, its
metrics and its room API (``sfu serve``). The worker is started before the app (so a
media port that cannot be bound is one clear error before any HTTP server runs) and
stopped with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sfu.cluster.admin import LocalAdmin
from sfu.config import Settings
from sfu.metrics import WorkerMetrics
from sfu.worker import Worker
from signaling.app import create_app


def embedded_app(worker: Worker, settings: Settings) -> FastAPI:
    """The app around ``worker``, which the caller has started."""

    @asynccontextmanager
    async def media_lifespan() -> AsyncIterator[None]:
        worker_metrics = WorkerMetrics(worker)
        worker_metrics.start()
        try:
            yield
        finally:
            await worker_metrics.stop()
            await worker.stop()

    return create_app(worker, settings, LocalAdmin(worker), media_lifespan)
