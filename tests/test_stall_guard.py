"""The worker-stall guard: no participant's input may stall another room.

Every room on a worker shares one event loop. Here a bystander room (a publisher, a
subscriber counting media, a participant pinging every 20 ms) and a hostile room share
a live server (:mod:`bystander`: real ICE, DTLS and SRTP on loopback), and an attacker
in the hostile room sends one kind of worst-case input for a second: hostile
transport-cc feedback, NACK floods, every other RTCP type at full size, publish offers
at the track limit and far beyond the m-line limit, messages within the rate limit and
a flood far beyond it. A control run ("none") shows what this machine gives the
bystander with no attack at all: when it fails too, the machine is too loaded to judge
the others. The bystander's ping must stay under 50 ms and its media must keep arriving;
each RTCP compound the server handled must have held the loop under 5 ms (the server
times them: ``sfu_rtcp_slowest_compound_seconds``), and a publish offer at the limit
must be answered within :data:`OFFER_LIMIT` (the median of five: one answer delayed by
the machine's scheduler is not a handler holding the loop, which the bystander's ping
measures). (RTCP datagrams over 1,500 bytes never
reach a handler: pylibsrtp refuses to unprotect them.)

Figures of each run are printed (``pytest -s``) as ``stall-guard <kind>: ...``.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Awaitable, Callable

import aioice.ice
import pytest
from bystander import Rooms, scrape, two_rooms
from server import run_sfu_server

pytestmark = pytest.mark.usefixtures("frozen_heap")

PING_LIMIT = 0.05
"""The bystander's worst ping while the attack lasts."""
HANDLER_LIMIT = 0.005
"""No RTCP compound may hold the event loop longer than this."""
OFFER_LIMIT = 0.05
"""A publish offer at the track limit is answered within this, as the median of the
attack's offers (its handler, the answer and two loopback hops)."""
ATTACK_SECONDS = 1.0
MIN_PACKETS = 40
"""Media packets the bystander receives at least in the attack's 1.3 s (it gets 90/s)."""
MAX_TRACKS = 16
"""settings.max_tracks_per_participant, the default (max_mlines_per_offer is 32)."""
HOSTILE_FCI = bytes.fromhex("0000 ffff 000000 00" + "1fff" * 8 + "1fff 0000")


def _rtcp(packet_type: int, count: int, body: bytes) -> bytes:
    return struct.pack("!BBH", 0x80 | count, packet_type, len(body) // 4) + body


def _fill(packet: bytes, size: int = 1200) -> bytes:
    return packet * (size // len(packet))


def transport_cc_compound() -> bytes:
    return _fill(_rtcp(205, 15, struct.pack("!II", 1, 2) + HOSTILE_FCI))


def nack_compound(media_ssrc: int, newest: int) -> bytes:
    items = (1200 - 12) // 4
    pid = (newest - 17) & 0xFFFF
    return _rtcp(
        205, 1, struct.pack("!II", 1, media_ssrc) + struct.pack("!HH", pid, 0xFFFF) * items
    )


def mixed_compounds(media_ssrc: int) -> list[bytes]:
    """Every other RTCP type at its largest within one 1,200-byte compound."""
    block = struct.pack("!I", media_ssrc) + bytes(20)
    sdes_items = bytes([1, 0]) * 590
    return [
        _fill(_rtcp(201, 31, struct.pack("!I", 1) + block * 31)),
        _fill(_rtcp(200, 31, struct.pack("!IQIII", 1, 0, 0, 0, 0) + block * 31)),
        _rtcp(202, 1, struct.pack("!I", 5) + sdes_items + bytes(4)),
        _rtcp(202, 31, (struct.pack("!I", 5) + bytes(4)) * 31),
        _fill(
            _rtcp(206, 15, struct.pack("!II", 1, 0) + b"REMB" + bytes([255, 0, 0, 0]) + bytes(1020))
        ),
        _fill(_rtcp(207, 0, bytes(64))),
        _rtcp(206, 4, struct.pack("!II", 1, 0) + struct.pack("!IB3x", media_ssrc, 1) * 148),
        _fill(_rtcp(206, 1, struct.pack("!II", 1, media_ssrc))),
        _fill(_rtcp(203, 31, bytes(124))),
    ]


def publish_offer(m_lines: int) -> str:
    """A publish offer of ``m_lines`` minimal sendonly audio m-lines, BUNDLEd."""
    session = [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(str(i) for i in range(m_lines)),
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
    ]
    media = []
    for mid in range(m_lines):
        media += [
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "c=IN IP4 0.0.0.0",
            f"a=mid:{mid}",
            "a=sendonly",
            "a=rtcp-mux",
            "a=rtpmap:111 opus/48000/2",
            f"a=ssrc:{1000 + mid} cname:c",
        ]
    return "\r\n".join(session + media) + "\r\n"


Attack = Callable[[Rooms], Awaitable[str]]
"""Runs for about :data:`ATTACK_SECONDS`; returns figures for the report line."""


async def _send_spread(rooms: Rooms, compounds: list[bytes]) -> str:
    for compound in compounds:
        rooms.send_rtcp(compound)
        await asyncio.sleep(ATTACK_SECONDS / len(compounds))
    return f"{len(compounds)} compounds"


async def no_attack(rooms: Rooms) -> str:
    """The control: what the bystander sees on this machine with nothing attacking."""
    await asyncio.sleep(ATTACK_SECONDS)
    return "no attack"


async def attack_transport_cc(rooms: Rooms) -> str:
    return await _send_spread(rooms, [transport_cc_compound()] * 20)


async def attack_nack_flood(rooms: Rooms) -> str:
    return await _send_spread(rooms, [nack_compound(*rooms.attacker_stream())] * 400)


async def attack_rtcp_mix(rooms: Rooms) -> str:
    ssrc, _ = rooms.attacker_stream()
    return await _send_spread(rooms, mixed_compounds(ssrc) * 40)


async def _offers(rooms: Rooms, m_lines: int, count: int) -> str:
    sdp = publish_offer(m_lines)
    tracks = {str(i): {"source": "microphone"} for i in range(m_lines)}
    replies = []
    async with rooms.attacker_socket() as ws:
        for _ in range(count):
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "publish_offer", "sdp": sdp, "tracks": tracks}))
            while True:
                reply = json.loads(await ws.recv())
                if reply["type"] in ("publish_answer", "error"):
                    break
            replies.append((reply["type"], reply.get("code"), time.monotonic() - sent))
            await asyncio.sleep(ATTACK_SECONDS / count)
    seconds = sorted(seconds for _, _, seconds in replies)
    kinds = sorted({f"{kind}:{code}" if code else kind for kind, code, _ in replies})
    return (
        f"{count} offers of {m_lines} m-lines ({len(sdp)} bytes): {kinds}, "
        f"median {seconds[len(seconds) // 2] * 1e3:.1f} ms, worst {seconds[-1] * 1e3:.1f} ms"
    )


async def attack_offers_at_the_limit(rooms: Rooms) -> str:
    figures = await _offers(rooms, MAX_TRACKS, 5)
    median = float(figures.rsplit("median ", 1)[1].split(" ")[0]) / 1e3
    assert median < OFFER_LIMIT, figures
    return figures


async def attack_offers_beyond_the_limit(rooms: Rooms) -> str:
    return await _offers(rooms, 300, 3)


async def _flood(rooms: Rooms, messages: int, seconds: float) -> str:
    async with rooms.attacker_socket() as ws:
        for index in range(messages):
            await ws.send(json.dumps({"type": "ping"}) if index % 2 else "{not json")
            if seconds:
                await asyncio.sleep(seconds / messages)
    return f"{messages} messages in {seconds or 'no'} s"


async def attack_messages_within_the_rate(rooms: Rooms) -> str:
    return await _flood(rooms, 100, 0.0) + "; " + await _flood(rooms, 50, ATTACK_SECONDS)


async def attack_message_flood(rooms: Rooms) -> str:
    return await _flood(rooms, 5000, 0.0)


ATTACKS: dict[str, Attack] = {
    "none": no_attack,
    "transport_cc": attack_transport_cc,
    "nack_flood": attack_nack_flood,
    "rtcp_mix": attack_rtcp_mix,
    "offers_at_the_limit": attack_offers_at_the_limit,
    "offers_beyond_the_limit": attack_offers_beyond_the_limit,
    "messages_within_the_rate": attack_messages_within_the_rate,
    "message_flood": attack_message_flood,
}


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture(scope="module")
def server():
    with run_sfu_server() as url:
        yield url


@pytest.mark.parametrize("kind", list(ATTACKS))
async def test_an_attack_does_not_stall_another_room(server, kind):
    async with two_rooms(server) as rooms:
        start = time.monotonic()
        packets = rooms.bystander_packets()
        figures = await ATTACKS[kind](rooms)
        await asyncio.sleep(0.3)
        worst = rooms.pinger.worst_since(start)
        pings = rooms.pinger.count_since(start)
        received = rooms.bystander_packets() - packets
        slowest = (await scrape(server))["sfu_rtcp_slowest_compound_seconds"]
        print(
            f"stall-guard {kind}: {figures}; bystander worst ping {worst * 1e3:.1f} ms "
            f"({pings} pings), {received} packets in {time.monotonic() - start:.1f} s; "
            f"slowest RTCP compound {slowest * 1e3:.2f} ms"
        )
        assert pings > 0, "no pong came back at all"
        assert worst < PING_LIMIT, f"bystander's ping took {worst * 1000:.0f} ms"
        assert received > MIN_PACKETS, f"the bystander received {received} packets"
        assert slowest < HANDLER_LIMIT, f"an RTCP compound took {slowest * 1000:.1f} ms"
