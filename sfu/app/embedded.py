"""The embedded server's app: the signaling app with an in-process media worker, its
metrics and its room API, started and stopped with the app (``sfu serve``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sfu.cluster.admin import LocalAdmin
from sfu.config import Settings
from sfu.metrics import WorkerMetrics
from sfu.worker import Worker
from signaling.app import create_app


def embedded_app(settings: Settings) -> FastAPI:
    worker = Worker(settings)

    @asynccontextmanager
    async def media_lifespan() -> AsyncIterator[None]:
        await worker.start()
        worker_metrics = WorkerMetrics(worker)
        worker_metrics.start()
        try:
            yield
        finally:
            await worker_metrics.stop()
            await worker.stop()

    return create_app(worker, settings, LocalAdmin(worker), media_lifespan)
