"""The worker's periodic work: one participant whose tick raises is told and removed;
the rest of its room and the other rooms go on, and the failure is logged once.

The real :class:`~sfu.worker.Worker` with real transports gathered on loopback.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from sfu.config import Settings
from sfu.participant import Participant
from sfu.protocol import ErrorCode, ErrorMessage, ParticipantLeftMessage, ServerMessage
from sfu.worker import Worker
from sfu.worker_api import Grant


async def test_a_participant_whose_tick_raises_is_removed_and_its_room_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(Settings(ice_addresses=["127.0.0.1"]))
    await worker.start()
    inboxes: dict[str, list[ServerMessage]] = {}
    try:
        for pid, room in (("broken", "a"), ("neighbour", "a"), ("elsewhere", "b")):
            inboxes[pid] = []
            grant = Grant(room=room, identity=pid, name=pid)
            await worker.join(pid, grant, inboxes[pid].append)
        ticks: dict[str, int] = {}
        real_tick = Participant.tick

        def tick(self: Participant, now: float) -> None:
            ticks[self.id] = ticks.get(self.id, 0) + 1
            if self.id == "broken":
                raise RuntimeError("a bug in periodic work")
            real_tick(self, now)

        monkeypatch.setattr(Participant, "tick", tick)
        with caplog.at_level(logging.ERROR, logger="sfu.worker"):
            await asyncio.sleep(1.0)
        assert "broken" not in worker.participants
        assert ticks["broken"] == 1
        assert ticks["neighbour"] > 5 and ticks["elsewhere"] > 5, ticks
        fatal = [m for m in inboxes["broken"] if isinstance(m, ErrorMessage)]
        assert [(m.code, m.fatal) for m in fatal] == [(ErrorCode.INTERNAL, True)]
        left = [m for m in inboxes["neighbour"] if isinstance(m, ParticipantLeftMessage)]
        assert [m.participant_id for m in left] == ["broken"]
        assert len([r for r in caplog.records if "broken" in r.getMessage()]) == 1
        assert worker.tick_failures == 1
    finally:
        for pid in ("neighbour", "elsewhere"):
            await worker.leave(pid)
        await worker.stop()
