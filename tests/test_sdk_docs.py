"""The SDK documentation's five-line example runs as written (only the URL differs)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path

import aioice.ice
import pytest

from sfu.client import SfuError, SyntheticVideoTrack, connect, dev_token
from sfu.protocol import ParticipantJoinedMessage

DOC = Path(__file__).resolve().parent.parent / "docs" / "sdk.md"
DEFAULT_URL = '"http://127.0.0.1:8080"'


def example() -> str:
    match = re.search(r"<!-- sdk-example -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None, "docs/sdk.md lost its marked example"
    return match[1]


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def test_five_line_example(sfu_server):
    code = example()
    assert DEFAULT_URL in code
    code = code.replace(DEFAULT_URL, repr(sfu_server))
    async with await connect(sfu_server, await dev_token(sfu_server, "demo", "human")) as human:
        output = io.StringIO()

        def run() -> None:
            with contextlib.redirect_stdout(output):
                exec(compile(code, str(DOC), "exec"), {"__name__": "__main__"})

        running = asyncio.ensure_future(asyncio.to_thread(run))
        event = await human.next_event("participant_joined", timeout=20)
        assert isinstance(event, ParticipantJoinedMessage)
        assert event.participant.identity == "bot"
        hello = await human.data.recv(topic="chat", timeout=20)
        assert (hello.identity, hello.data) == ("bot", {"text": "hello from a bot"})
        await human.data.send({"text": "hi bot"}, topic="chat")
        await asyncio.wait_for(running, 20)
    assert output.getvalue() == "human: hi bot\n"


async def test_paused_track_stops_arriving(sfu_server):
    """``set_track_settings(paused=True)`` is how the SDK deselects a track."""
    token = await dev_token(sfu_server, "select", "publisher")
    async with await connect(sfu_server, token) as publisher:
        await publisher.publish(SyntheticVideoTrack(160, 120, fps=15))
        async with await connect(
            sfu_server, await dev_token(sfu_server, "select", "viewer")
        ) as viewer:
            remote = await viewer.wait_for_track(kind="video", timeout=20)
            await asyncio.wait_for(remote.track.recv(), 10)
            with pytest.raises(SfuError) as refused:
                await viewer.set_track_settings("TR_unknown", paused=True)
            assert refused.value.code == "unknown_track"
            await viewer.set_track_settings(remote.track_id, paused=True)
            for _ in range(100):  # frames already queued or on the way, then none
                try:
                    await asyncio.wait_for(remote.track.recv(), 1.5)
                except TimeoutError:
                    break
            else:
                pytest.fail("frames kept arriving after the track was paused")
            await viewer.set_track_settings(remote.track_id, paused=False)
            await asyncio.wait_for(remote.track.recv(), 10)
