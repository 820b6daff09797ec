"""ICE-TCP (sfu/ice_tcp.py): RFC 4571 framing, routing a stream by its first STUN
request, and the streams it closes. Real TCP over loopback; the browser over TCP is in
tests/test_single_port_browser.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aioice.ice
import aioice.stun
import pytest
from aiortc.rtcdtlstransport import RTCCertificate
from test_aiortc_adapter import Endpoint, connected_pair, rtp, wait_for
from test_udp_mux import binding_request

from sfu import ice_tcp
from sfu.aiortc_adapter import SharedPorts, use_host_addresses
from sfu.ice_tcp import (
    MAX_FRAME,
    FrameError,
    IceTcpServer,
    Rfc4571Framer,
    frame,
    tcp_candidate_priority,
)
from sfu.udp_mux import UdpMux


@pytest.mark.parametrize(
    ("chunks", "frames"),
    [
        ([b"\x00\x03abc"], [b"abc"]),
        ([b"\x00\x03ab", b"c\x00\x01x"], [b"abc", b"x"]),
        ([b"\x00", b"\x02", b"hi"], [b"hi"]),
        ([b"\x00\x02hi\x00\x05he"], [b"hi"]),  # the rest waits
    ],
    ids=["one", "split", "byte-by-byte", "partial-tail"],
)
def test_framer_splits_the_stream(chunks: list[bytes], frames: list[bytes]) -> None:
    framer = Rfc4571Framer()
    got = [f for chunk in chunks for f in framer.feed(chunk)]
    assert got == frames


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 0xFFFF])
def test_framer_refuses_absurd_lengths(length: int) -> None:
    with pytest.raises(FrameError):
        Rfc4571Framer().feed(length.to_bytes(2, "big") + b"x")


def test_tcp_candidates_rank_below_udp_host_candidates() -> None:
    udp = aioice.ice.candidate_priority(1, "host")
    assert tcp_candidate_priority(1) < udp
    assert tcp_candidate_priority(1) > aioice.ice.candidate_priority(1, "relay")
    assert tcp_candidate_priority(1) >> 24 == 90


@pytest.fixture
async def ports() -> AsyncIterator[SharedPorts]:
    mux = UdpMux(["127.0.0.1"])
    tcp = IceTcpServer(["127.0.0.1"])
    await mux.start()
    await tcp.start()
    shared = SharedPorts(mux, tcp)
    yield shared
    shared.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    """Whether the server closes the stream (EOF or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    length = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(length)


async def test_a_stream_is_routed_by_its_first_requests_ufrag(ports):
    use_host_addresses(["127.0.0.1"])
    server = Endpoint(False, RTCCertificate.generateCertificate(), ports)
    await server.session.gather()
    tcp = [c for c in server.session.local_candidates() if c.transport == "tcp"]
    assert [(c.tcptype, c.port) for c in tcp] == [("passive", ports.tcp.port)]  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp[0].port)
    try:
        username = f"{server.session.ice_ufrag}:peer"
        writer.write(frame(binding_request(username, server.session.ice_pwd)))
        response = aioice.stun.parse_message(await asyncio.wait_for(read_frame(reader), 3))
        assert response.message_class == aioice.stun.Class.RESPONSE
        assert response.attributes["XOR-MAPPED-ADDRESS"] == writer.get_extra_info("sockname")
        # A client that stops reading: past 1 MiB queued, packets to it are dropped and
        # counted, and the stream stays.
        (stream,) = ports.tcp.listeners[0].lookup(server.session.ice_ufrag).streams.values()  # type: ignore[union-attr]
        for _ in range(20_000):
            stream.send(b"\x80" * 1200)
        assert ports.tcp.dropped_sends > 0  # type: ignore[union-attr]
        assert ports.tcp.connections == 1  # type: ignore[union-attr]
    finally:
        writer.close()
        await server.session.close()
    assert ports.tcp.listeners[0].lookup(server.session.ice_ufrag) is None  # type: ignore[union-attr]


async def test_bad_streams_are_closed_and_counted_and_nothing_else_is_affected(ports, monkeypatch):
    monkeypatch.setattr(ice_tcp, "FIRST_FRAME_TIMEOUT", 0.3)
    monkeypatch.setattr(ice_tcp, "INCOMPLETE_FRAME_TIMEOUT", 0.3)
    server, client = await connected_pair(ports)  # a UDP transport on the same ports
    tcp = ports.tcp
    assert tcp is not None
    try:
        bad_inputs = {
            "absurd length": (b"\xff\xff" + b"x" * 100, "bad_frame_length"),
            "empty frame": (b"\x00\x00", "bad_frame_length"),
            "not STUN first": (frame(b"\x16\xfe\xfd" + b"\x00" * 40), "malformed_stun"),
            "truncated STUN": (frame(binding_request("abcd:efgh")[:24]), "malformed_stun"),
            "unknown ufrag": (frame(binding_request("zzzz:efgh", "p" * 22)), "unknown_ufrag"),
            "never completes a frame": (b"\x00\x50" + b"\x00" * 10, "timeout"),
            "sends nothing": (b"", "timeout"),
        }
        for what, (data, _) in bad_inputs.items():
            reader, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
            writer.write(data)
            assert await closed_by_server(reader), what
            writer.close()
        expected: dict[str, int] = {}
        for _, reason in bad_inputs.values():
            expected[reason] = expected.get(reason, 0) + 1
        assert dict(tcp.closes) == expected
        assert tcp.connections == 0
        client.session.send_rtp(rtp(96, 1, 0x1234, b"\x10still"))
        await wait_for(lambda: server.rtp)
    finally:
        await asyncio.gather(server.session.close(), client.session.close())


async def test_connections_per_address_are_limited(ports, monkeypatch):
    monkeypatch.setattr(ice_tcp, "MAX_CONNECTIONS_PER_IP", 3)
    tcp = ports.tcp
    assert tcp is not None
    streams = [await asyncio.open_connection("127.0.0.1", tcp.port) for _ in range(4)]
    try:
        assert await closed_by_server(streams[3][0], timeout=2.0)
        assert not await closed_by_server(streams[0][0], timeout=0.2)
        assert tcp.closes == {"per_ip_limit": 1} and tcp.connections == 3
    finally:
        for _, writer in streams:
            writer.close()
    await wait_for(lambda: tcp.connections == 0)


async def test_a_taken_tcp_port_is_a_clear_error(ports):
    port = ports.tcp.port  # type: ignore[union-attr]
    with pytest.raises(OSError, match=f"cannot listen on TCP port {port} of 127.0.0.1"):
        await IceTcpServer(["127.0.0.1"], port).start()
