"""One participant's RTCP cannot hold the worker: bounded feedback, NACK and time budgets.

The live tests run the real server and the SFU's own lean participants over real ICE,
DTLS and SRTP on loopback (:mod:`bystander`): an attacker in one room sends hostile
RTCP; a bystander in another room must keep its ping under 50 ms and keep receiving
media.
"""

from __future__ import annotations

import asyncio
import struct
import time

import aioice.ice
import pytest
from bystander import scrape, two_rooms
from server import run_sfu_server

from sfu.consumer import RETRANSMIT_BURST, RETRANSMIT_RATE, Consumer
from sfu.producer import Producer
from sfu.router import Router
from sfu.rtcp_budget import WINDOW, RtcpBudget
from sfu.rtp.packet import build_rtp_packet, payload_offset
from sfu.sdp import Codec

pytestmark = pytest.mark.usefixtures("frozen_heap")

PING_LIMIT = 0.05
HOSTILE_FCI = bytes.fromhex("0000 ffff 000000 00" + "1fff" * 8 + "1fff 0000")


def transport_cc_compound(size: int = 1200) -> bytes:
    """As many hostile transport-cc feedback packets as fit in ``size`` bytes."""
    body = struct.pack("!II", 1, 2) + HOSTILE_FCI
    packet = struct.pack("!BBH", 0x8F, 205, len(body) // 4) + body
    return packet * (size // len(packet))


def nack_compound(media_ssrc: int, newest: int, size: int = 1200) -> bytes:
    """One NACK naming the 17 packets before ``newest`` over and over: 5,000 requests
    in 1,200 bytes."""
    items = (size - 12) // 4
    pid = (newest - 17) & 0xFFFF
    body = struct.pack("!II", 1, media_ssrc) + struct.pack("!HH", pid, 0xFFFF) * items
    return struct.pack("!BBH", 0x81, 205, len(body) // 4) + body


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


# -- the budget, unit ---------------------------------------------------------------------


def test_budget_drops_for_the_rest_of_the_window_then_admits_again():
    budget = RtcpBudget(0.01)
    assert budget.admit(5.0)
    budget.charge(0.004)
    assert budget.admit(5.1)
    budget.charge(0.007)  # 11 ms: over
    assert not budget.admit(5.2)
    assert not budget.admit(5.0 + WINDOW - 0.001)
    assert budget.dropped == 2
    assert budget.admit(5.0 + WINDOW)
    assert budget.dropped == 2
    assert budget.slowest == 0.007
    with pytest.raises(ValueError, match="must be positive"):
        RtcpBudget(0)


# -- NACKs: resent bytes per second are bounded ---------------------------------------------


def test_a_nack_flood_resends_at_most_the_retransmission_rate():
    sent: list[bytes] = []
    producer = Producer(
        "TR_x", "PA_pub", "audio", "0", [Codec(111, "opus", 48000, 2)], [], "mic", lambda s: None
    )
    consumer = Consumer("CO_0", producer, "PA_sub", lambda h, p: sent.append(h + p))
    route = Router().add_producer(producer)
    route.add(consumer)
    route.activate(consumer, 111, None, None)
    stream = producer.add_stream(0xAAAA, None)
    for seq in range(1000):
        data = build_rtp_packet(
            payload_type=111,
            sequence_number=seq,
            timestamp=seq * 960,
            ssrc=0xAAAA,
            payload=bytes(988),
        )
        producer.receive(stream, data, payload_offset(data), now=100.0 + seq / 50)
    first = struct.unpack_from("!H", sent[0], 2)[0]
    forwarded = len(sent)
    packet_size = len(sent[0])
    flood = [(first + i % 1000) & 0xFFFF for i in range(5000)]

    resent = consumer.retransmit(flood, now=10.0)
    assert resent * packet_size <= RETRANSMIT_BURST + packet_size
    assert resent == len(sent) - forwarded
    assert consumer.retransmissions_over_budget == 5000 - resent
    # 0.2 s later: 0.2 s worth of the rate more, no new burst.
    again = consumer.retransmit(flood, now=10.2)
    assert again * packet_size == pytest.approx(RETRANSMIT_RATE * 0.2, abs=2 * packet_size)


# -- live: an attacker's RTCP does not stall another room -------------------------------------


async def _attack_and_watch(rooms, compounds: list[bytes], seconds: float) -> tuple[float, int]:
    """Send ``compounds`` spread over ``seconds``; the bystander's worst ping meanwhile and
    the media packets it received."""
    start = time.monotonic()
    packets = rooms.bystander_packets()
    interval = seconds / len(compounds)
    for compound in compounds:
        rooms.send_rtcp(compound)
        await asyncio.sleep(interval)
    await asyncio.sleep(0.3)
    assert rooms.pinger.count_since(start) > 0, "no pong came back at all"
    return rooms.pinger.worst_since(start), rooms.bystander_packets() - packets


async def test_hostile_transport_cc_feedback_does_not_stall_another_room():
    # Before the fix one such compound held the loop 1.5 s; ten of them 22.7 s.
    with run_sfu_server() as server:
        async with two_rooms(server) as rooms:
            worst, packets = await _attack_and_watch(rooms, [transport_cc_compound()] * 20, 1.0)
            assert worst < PING_LIMIT, f"bystander's ping took {worst * 1000:.0f} ms"
            assert packets > 40, f"the bystander received {packets} packets in 1.3 s"


async def test_an_rtcp_flood_is_cut_by_the_budget_and_counted():
    with run_sfu_server() as server:
        async with two_rooms(server) as rooms:
            flood = [nack_compound(*rooms.attacker_stream())] * 400
            worst, packets = await _attack_and_watch(rooms, flood, 1.0)
            assert worst < PING_LIMIT, f"bystander's ping took {worst * 1000:.0f} ms"
            assert packets > 40, f"the bystander received {packets} packets in 1.3 s"
            metrics = await scrape(server)
            assert metrics['sfu_rtcp_dropped_packets_total{reason="budget"}'] > 0
            assert metrics['sfu_rtp_retransmissions_over_budget_total{kind="video"}'] > 0
