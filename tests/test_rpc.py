"""Signaling node → worker requests and worker heartbeats over the in-process bus (the
embedded default): a failed subscription read or heartbeat round is survived."""

import asyncio
import logging
import time
from typing import Any

import pytest

from sfu.cluster import rpc
from sfu.cluster.backend import WorkerInfo
from sfu.cluster.memory import MemoryBackend, MemoryStore, MemorySubscription
from sfu.cluster.rpc import RpcClient, RpcServer
from sfu.cluster.worker_service import WorkerService
from sfu.config import Settings


class FailingOnce(MemoryBackend):
    """Subscriptions to ``channel`` raise on their first read, as a bug in a backend
    would."""

    def __init__(self, store: MemoryStore, channel: str) -> None:
        super().__init__(store)
        self._channel = channel

    async def subscribe(self, channel: str) -> MemorySubscription:
        subscription = await super().subscribe(channel)
        if channel == self._channel:
            read = subscription.get
            failed = False

            async def get(timeout: float) -> str | None:
                nonlocal failed
                if not failed:
                    failed = True
                    raise RuntimeError("read failed")
                return await read(timeout)

            subscription.get = get  # type: ignore[method-assign]
        return subscription


async def echo(method: str, params: dict[str, Any]) -> Any:
    return {"method": method, **params}


@pytest.mark.parametrize(("channel", "what"), [("worker:w", "requests"), ("node:n", "replies")])
async def test_a_failed_read_is_logged_and_the_loop_goes_on(monkeypatch, caplog, channel, what):
    monkeypatch.setattr(rpc, "POLL_SECONDS", 0.05)
    store = MemoryStore()
    server = RpcServer(FailingOnce(store, channel), "w", echo)
    client = RpcClient(FailingOnce(store, channel), "n", timeout=2.0)
    await server.start()
    await client.start()
    try:
        with caplog.at_level(logging.ERROR, logger="sfu.cluster.rpc"):
            assert await client.call("w", "ping", n=1) == {"method": "ping", "n": 1}
            assert await client.call("w", "ping", n=2) == {"method": "ping", "n": 2}
        assert f"reading {what} failed" in caplog.text
    finally:
        await client.stop()
        await server.stop()


class FailingRegistration(MemoryBackend):
    """Its second worker registration raises, as a bug in a backend would."""

    registrations = 0

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        self.registrations += 1
        if self.registrations == 2:
            raise RuntimeError("registration failed")
        await super().register_worker(info, ttl)


async def test_a_failed_heartbeat_round_is_logged_and_the_heartbeats_go_on(caplog):
    backend = FailingRegistration(MemoryStore())
    settings = Settings(ice_addresses=["127.0.0.1"], heartbeat_interval=0.05)
    service = WorkerService(settings, backend, "w")
    await service.start()  # the first registration
    try:
        deadline = time.monotonic() + 5
        while backend.registrations < 4:
            assert time.monotonic() < deadline, "the heartbeats stopped"
            await asyncio.sleep(0.02)
        assert "heartbeat round failed" in caplog.text
        assert [w.worker_id for w in await backend.live_workers()] == ["w"]
    finally:
        await service.stop()
