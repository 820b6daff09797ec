"""What a subscriber that never answers its subscribe offer costs the worker (issue 14).

Run from the repository root::

    python tests/renegotiation_stall.py [--changes 12000] [--tracks 200]

It starts ``sfu serve`` and talks to it over the WebSocket: a publisher and a silent
subscriber (it reads everything, answers nothing) in one room, a bystander pinging in
another. First a baseline: the publisher publishes ``--tracks`` tracks at once. Then,
in a fresh room with a fresh silent subscriber, ``--changes`` track changes (publish
offers that swap 16 tracks for 16 others: 16 unpublished, 16 published), then the same
big publish again. It prints the big publish's round trip with and without the churn,
the slowest churn offer, and the bystander's ping round trips.

The server runs with limits raised (``--tracks`` per participant, a renegotiation
deadline longer than the run) so that the same operations are measured before and
after the limits exist. :func:`publish_offer_sdp` is also used by
``tests/test_renegotiation_limits.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfu.access_token import mint_token
from sfu.config import DEV_API_KEY, DEV_API_SECRET

CHURN_TRACKS = 16
"""Tracks swapped by one churn offer (the default track limit per participant)."""
PING_INTERVAL = 0.02

_SESSION = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE {mids}\r\n"
    "a=ice-ufrag:stal\r\n"
    "a=ice-pwd:stallstallstallstallstal\r\n"
    "a=fingerprint:sha-256 66:10:F4:2F:32:57:3F:96:0A:8B:C9:91:C4:7E:2D:AB:B3:60:18:55:54:"
    "94:CD:53:65:29:77:D6:88:21:A9:C8\r\n"
    "a=setup:actpass\r\n"
)
_MEDIA = {
    "audio": "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
    "video": "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n",
}
_MEDIA_COMMON = (
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:{mid}\r\n"
    "a=sendonly\r\n"
    "a=rtcp-mux\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
)


def publish_offer_sdp(mids: Iterable[str]) -> str:
    """A minimal publish offer with one sendonly m-line per mid (even positions audio,
    odd positions video), every one in the BUNDLE group; about 170 bytes per m-line, so
    a 200-track offer fits one WebSocket message. It carries no candidates: the publish
    transport never connects, which the measured paths do not need."""
    mids = list(mids)
    media = "".join(
        _MEDIA["audio" if i % 2 == 0 else "video"] + _MEDIA_COMMON.format(mid=mid)
        for i, mid in enumerate(mids)
    )
    return _SESSION.format(mids=" ".join(mids)) + media


class Client:
    """One signaling socket: requests in order, every other message drained."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events: list[dict[str, Any]] = []
        self.reply: dict[str, Any] = {}
        """The reply to the latest request."""
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def join(cls, url: str, room: str, identity: str, reply: str = "joined") -> Client:
        """A socket that sent ``join`` and got ``reply`` (``error`` when refused)."""
        token = mint_token(DEV_API_KEY, DEV_API_SECRET, room, identity)
        socket = await connect(url.replace("http", "ws") + "/ws", max_size=None)
        client = cls(socket)
        client.reply = await client.request({"type": "join", "token": token}, reply)
        return client

    async def _read(self) -> None:
        async for frame in self.socket:
            message = json.loads(frame)
            if message["type"] in ("joined", "publish_answer", "pong", "error"):
                self.replies.put_nowait(message)
            else:
                self.events.append(message)

    async def request(self, message: dict[str, Any], reply: str) -> dict[str, Any]:
        await self.socket.send(json.dumps(message))
        answer = await self.replies.get()
        if answer["type"] != reply:
            raise RuntimeError(f"{message['type']}: expected {reply}, got {answer}")
        return answer

    async def publish(self, mids: Iterable[str], reply: str = "publish_answer") -> float:
        """Seconds from sending the offer to its answer (its ``reply``)."""
        started = time.perf_counter()
        self.reply = await self.request(
            {"type": "publish_offer", "sdp": publish_offer_sdp(mids)}, reply
        )
        return time.perf_counter() - started

    async def event(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The first event of type ``kind`` received so far or within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((e for e in self.events if e["type"] == kind), None)
            if found is not None:
                return found
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {kind} event within {timeout} s")

    async def close(self) -> None:
        await self.socket.close()
        self._reader.cancel()


async def ping_forever(client: Client, rtts: list[float]) -> None:
    while True:
        started = time.perf_counter()
        await client.request({"type": "ping"}, "pong")
        rtts.append(time.perf_counter() - started)
        await asyncio.sleep(PING_INTERVAL)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ping_summary(rtts: list[float]) -> str:
    if not rtts:
        return "no pings"
    return f"median {ms(statistics.median(rtts))}, max {ms(max(rtts))} ({len(rtts)} pings)"


async def measure(url: str, changes: int, tracks: int) -> None:
    bystander = await Client.join(url, "stall-bystander", "bystander")
    rtts: list[float] = []
    pinger = asyncio.create_task(ping_forever(bystander, rtts))
    big = [f"big{i}" for i in range(tracks)]

    publisher = await Client.join(url, "stall-baseline", "publisher")
    silent = await Client.join(url, "stall-baseline", "silent")
    rtts.clear()
    baseline = await publisher.publish(big)
    baseline_pings = list(rtts)
    for client in (publisher, silent):
        await client.close()

    publisher = await Client.join(url, "stall-churn", "publisher")
    silent = await Client.join(url, "stall-churn", "silent")
    sets = [[f"a{i}" for i in range(CHURN_TRACKS)], [f"b{i}" for i in range(CHURN_TRACKS)]]
    await publisher.publish(sets[0])
    offers = (changes + 2 * CHURN_TRACKS - 1) // (2 * CHURN_TRACKS)
    rtts.clear()
    churn = [await publisher.publish(sets[(n + 1) % 2]) for n in range(offers)]
    churn_pings = list(rtts)
    rtts.clear()
    after = await publisher.publish(big)
    after_pings = list(rtts)
    pinger.cancel()
    for client in (publisher, silent, bystander):
        await client.close()

    print(f"{tracks}-track publish, no churn:           {ms(baseline)}")
    print(f"{tracks}-track publish after {offers * 2 * CHURN_TRACKS} changes: {ms(after)}")
    print(
        f"churn offers ({offers} x {2 * CHURN_TRACKS} changes): first {ms(churn[0])}, "
        f"last {ms(churn[-1])}, slowest {ms(max(churn))}"
    )
    print(f"silent subscriber received {len(silent.events)} events")
    print(f"bystander ping during the baseline publish: {ping_summary(baseline_pings)}")
    print(f"bystander ping during the churn:            {ping_summary(churn_pings)}")
    print(f"bystander ping during the last publish:     {ping_summary(after_pings)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=12_000)
    parser.add_argument("--tracks", type=int, default=200)
    args = parser.parse_args()
    from server import run_sfu_server

    env = {
        "SFU_MAX_TRACKS_PER_PARTICIPANT": str(max(args.tracks, CHURN_TRACKS)),
        "SFU_RENEGOTIATION_TIMEOUT": "3600",
        "SFU_LOG_LEVEL": "warning",
    }
    with run_sfu_server(env=env) as url:
        asyncio.run(measure(url, args.changes, args.tracks))


if __name__ == "__main__":
    main()
