"""Worker.join: a room is in the worker's rooms (what the room API, metrics and
placement see) only once a participant got in; a join whose transports fail to open
leaves nothing behind. The real Worker with real transports on loopback."""

from __future__ import annotations

import asyncio

import pytest

from sfu.config import Settings
from sfu.participant import Participant
from sfu.worker import Worker
from sfu.worker_api import Grant


async def test_a_room_appears_once_someone_is_in_and_a_failed_join_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = Worker(Settings(ice_addresses=["127.0.0.1"]))
    await worker.start()
    try:
        opened = asyncio.Event()
        release = asyncio.Event()
        real_open = Participant.open

        async def slow_open(self: Participant) -> None:
            opened.set()
            await release.wait()
            if self.id == "PA_fails":
                raise OSError("no port")
            await real_open(self)

        monkeypatch.setattr(Participant, "open", slow_open)
        joining = asyncio.create_task(
            worker.join("PA_a", Grant(room="r", identity="a", name="a"), lambda m: None)
        )
        await opened.wait()
        assert "r" not in worker.rooms, "nobody is in the room yet"
        release.set()
        await joining
        assert set(worker.rooms) == {"r"}

        with pytest.raises(OSError):
            await worker.join("PA_fails", Grant(room="q", identity="f", name="f"), print)
        assert "q" not in worker.rooms and "PA_fails" not in worker.participants
        await worker.leave("PA_a")
        assert worker.rooms == {}
    finally:
        await worker.stop()
