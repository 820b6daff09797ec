"""SendBatch: SRTP protected in place, sent with sendmmsg and UDP segmentation offload,
checked against pylibsrtp's own protect on real loopback sockets."""

import asyncio
import gc
import os
import socket
from collections.abc import Iterator

import pylibsrtp
import pytest

from sfu.rtp.packet import RtpHeader, build_rtp_packet
from sfu.send_batch import SLOTS, FlushScheduler, SendBatch, _Offload, flush_scheduler, sockaddr

KEY = bytes(range(30))
SO_NO_CHECK = 11
"""With UDP checksums off the kernel refuses segmentation offload (EINVAL)."""


def srtp_session() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=KEY,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    )
    return pylibsrtp.Session(policy)


def rtp(seq: int, size: int) -> bytes:
    return build_rtp_packet(
        payload_type=96,
        sequence_number=seq,
        timestamp=seq * 3000,
        ssrc=0x1234,
        payload=bytes([seq & 0xFF]) * (size - 12),
    )


class ManualScheduler(FlushScheduler):
    """Records what would be flushed; the test flushes by hand."""

    def __init__(self) -> None:
        self.scheduled: list[SendBatch] = []

    def schedule(self, batch: SendBatch) -> None:
        self.scheduled.append(batch)


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def receive(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(4096) for _ in range(count)]


def expected(packets: list[bytes]) -> list[bytes]:
    reference = srtp_session()
    return [reference.protect(packet) for packet in packets]


def test_sockaddr_layouts():
    v4 = sockaddr(("127.0.0.1", 5004))
    assert len(v4) == 16
    assert v4[2:4] == (5004).to_bytes(2, "big")
    assert v4[4:8] == bytes([127, 0, 0, 1])
    v6 = sockaddr(("::1", 5004))
    assert len(v6) == 28
    assert v6[2:4] == (5004).to_bytes(2, "big")
    assert v6[8:24] == socket.inet_pton(socket.AF_INET6, "::1")


@pytest.mark.parametrize(
    "sizes",
    [
        [1000] * 5,  # one frame: one offloaded message
        [1000, 1000, 1000, 400],  # a frame whose last packet is smaller
        [300, 1200, 1200, 700, 700, 90, 1350],  # runs and singles
        [1200] * 60,  # more than a datagram's 64 KB in one run
    ],
)
def test_datagrams_arrive_as_pylibsrtp_would_protect_them(receiver, sender, sizes):
    scheduler = ManualScheduler()
    batch = SendBatch(sender.fileno(), receiver.getsockname(), srtp_session(), scheduler)
    packets = [rtp(seq, size) for seq, size in enumerate(sizes)]
    for packet in packets:
        batch.add(packet)
    assert scheduler.scheduled == [batch]
    batch.flush()
    assert receive(receiver, len(packets)) == expected(packets)
    assert (batch.packets_sent, batch.errors) == (len(packets), 0)
    batch.close()


def test_a_header_extension_block_is_inserted_after_the_fixed_header(receiver, sender):
    batch = SendBatch(sender.fileno(), receiver.getsockname(), srtp_session(), ManualScheduler())
    extension = bytes.fromhex("bede0001 31002a00")  # transport-wide sequence number 42
    packets = [rtp(seq, 700) for seq in range(3)]
    for packet in packets:
        batch.add(packet[:12], packet[12:], extension)
    batch.flush()
    stamped = [
        bytes([packet[0] | 0x10]) + packet[1:12] + extension + packet[12:] for packet in packets
    ]
    assert receive(receiver, 3) == expected(stamped)
    assert RtpHeader.parse(stamped[0]).extensions == {3: b"\x00\x2a"}
    batch.close()


def test_datagrams_above_the_offload_segment_size_go_one_by_one(receiver, sender):
    batch = SendBatch(sender.fileno(), receiver.getsockname(), srtp_session(), ManualScheduler())
    for seq in range(3):
        batch.add(rtp(seq, 1450))  # above GSO_MAX_SEGMENT, and above what pylibsrtp takes
    batch.flush()
    assert [len(datagram) for datagram in receive(receiver, 3)] == [1450 + 10] * 3
    assert (batch.packets_sent, batch.errors) == (3, 0)
    batch.close()


def test_a_full_batch_is_sent_before_it_takes_more(receiver, sender):
    scheduler = ManualScheduler()
    batch = SendBatch(sender.fileno(), receiver.getsockname(), srtp_session(), scheduler)
    packets = [rtp(seq, 200) for seq in range(SLOTS + 3)]
    for packet in packets:
        batch.add(packet)
    assert batch.packets_sent == SLOTS
    batch.flush()
    assert receive(receiver, len(packets)) == expected(packets)
    assert scheduler.scheduled == [batch, batch]
    batch.close()


def test_refused_offload_falls_back_to_one_datagram_per_message(
    receiver, sender, monkeypatch, caplog
):
    monkeypatch.setattr(_Offload, "enabled", True)
    sender.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    batch = SendBatch(sender.fileno(), receiver.getsockname(), srtp_session(), ManualScheduler())
    packets = [rtp(seq, 800) for seq in range(4)] + [rtp(9, 100)]
    for packet in packets:
        batch.add(packet)
    batch.flush()
    assert receive(receiver, len(packets)) == expected(packets)
    assert (batch.packets_sent, batch.errors) == (len(packets), 0)
    assert _Offload.enabled is False
    assert "segmentation offload refused" in caplog.text
    batch.close()


def test_bad_packets_and_kernel_errors_are_counted_not_raised(receiver, sender):
    batch = SendBatch(sender.fileno(), receiver.getsockname(), srtp_session(), ManualScheduler())
    batch.add(rtp(1, 1501))  # longer than a slot takes
    batch.add(b"\x80\x60")  # too short for libsrtp
    batch.add(rtp(2, 100)[:16], b"payload", bytes.fromhex("bede0001 31002a00"))  # CSRC + ext
    assert (batch.packets_sent, batch.errors) == (0, 3)
    batch.flush()
    # An IPv6 destination from an IPv4 socket: every message is refused.
    wrong_family = SendBatch(sender.fileno(), ("::1", 9), srtp_session(), ManualScheduler())
    for seq in range(3):
        wrong_family.add(rtp(seq, 500))
    wrong_family.add(rtp(3, 100))
    wrong_family.flush()
    assert (wrong_family.packets_sent, wrong_family.errors) == (0, 4)
    wrong_family.close()
    # The batch still works afterwards; a packet may come as header and payload.
    good = rtp(7, 300)
    batch.add(good[:12], good[12:])
    batch.flush()
    assert receive(receiver, 1) == expected([good])


def test_a_closed_batch_drops_what_it_had_and_refuses_more(receiver, sender):
    batch = SendBatch(sender.fileno(), receiver.getsockname(), srtp_session(), ManualScheduler())
    batch.add(rtp(1, 300))
    batch.close()
    batch.flush()
    batch.add(rtp(2, 300))
    batch.close()
    assert (batch.packets_sent, batch.errors) == (0, 1)
    receiver.settimeout(0.2)
    with pytest.raises(TimeoutError):
        receiver.recv(4096)


async def test_the_loop_flushes_every_batch_once_per_iteration(sender):
    receivers = []
    batches = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        receivers.append(sock)
        batches.append(
            SendBatch(sender.fileno(), sock.getsockname(), srtp_session(), flush_scheduler())
        )
    try:
        packets = [rtp(seq, 600) for seq in range(3)]
        for packet in packets:
            for batch in batches:
                batch.add(packet)
        assert [batch.packets_sent for batch in batches] == [0, 0]
        await asyncio.sleep(0)
        assert [batch.packets_sent for batch in batches] == [3, 3]
        for sock in receivers:
            assert receive(sock, 3) == expected(packets)
    finally:
        for batch in batches:
            batch.close()
        for sock in receivers:
            sock.close()


def test_a_batch_releases_its_socket_duplicate(receiver, sender):
    batch = SendBatch(sender.fileno(), receiver.getsockname(), srtp_session(), ManualScheduler())
    duplicate = batch._fd
    os.fstat(duplicate)
    del batch
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(duplicate)


async def test_poke_runs_the_after_flush_callbacks_once_per_iteration():
    scheduler = FlushScheduler(asyncio.get_running_loop())
    runs = []
    scheduler.add_after_flush(lambda: runs.append(1))
    for _ in range(5):  # five received packets in one iteration
        scheduler.poke()
    await asyncio.sleep(0)
    assert runs == [1]
    await asyncio.sleep(0)
    assert runs == [1]  # nothing received, nothing run
    scheduler.poke()
    await asyncio.sleep(0)
    assert runs == [1, 1]


async def test_a_failing_after_flush_callback_stops_neither_sends_nor_the_others(
    receiver, sender, caplog
):
    scheduler = FlushScheduler(asyncio.get_running_loop())
    runs = []

    def broken() -> None:
        raise RuntimeError("periodic work failed")

    scheduler.add_after_flush(broken)
    scheduler.add_after_flush(lambda: runs.append(1))
    batch = SendBatch(sender.fileno(), receiver.getsockname(), srtp_session(), scheduler)
    packet = rtp(1, 200)
    batch.add(packet)
    await asyncio.sleep(0)
    assert receive(receiver, 1) == expected([packet])
    assert runs == [1]
    assert "after-flush callback failed" in caplog.text
    scheduler.remove_after_flush(broken)
    batch.add(rtp(2, 200))
    await asyncio.sleep(0)
    assert runs == [1, 1]
    batch.close()
