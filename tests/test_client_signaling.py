"""The client SDK's signaling channel against a real WebSocket server that misbehaves."""

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve

from sfu.client.errors import REQUEST_TIMEOUT, SfuError
from sfu.client.signaling import SignalingChannel
from sfu.protocol import PingMessage, PongMessage


async def test_a_request_the_server_never_answers_fails_with_a_clear_error():
    received: list[str] = []

    async def silent(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(str(message))  # read, never answer

    async with serve(silent, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        closed = asyncio.Event()
        channel = await SignalingChannel.open(f"ws://127.0.0.1:{port}", lambda m: None, closed.set)
        channel.request_timeout = 0.2
        try:
            with pytest.raises(SfuError) as failed:
                await channel.request(PingMessage(), PongMessage)
            assert failed.value.code == REQUEST_TIMEOUT
            assert "ping" in failed.value.message
            assert len(received) == 1 and '"ping"' in received[0]
            # The channel stays usable: the next request is sent and times out too.
            with pytest.raises(SfuError):
                await channel.request(PingMessage(), PongMessage)
            assert len(received) == 2
        finally:
            await channel.close()
