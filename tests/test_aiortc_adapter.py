"""The aiortc seams the SFU relies on, and a real ICE/DTLS/SRTP pair over loopback."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiortc.rtcdtlstransport import RTCCertificate

from sfu.aiortc_adapter import (
    DtlsSrtpSession,
    RemoteParameters,
    SharedPorts,
    use_host_addresses,
)
from sfu.rtp.packet import build_rtp_packet
from sfu.rtp.rtcp import PictureLossIndication
from sfu.send_batch import flush_scheduler
from sfu.udp_mux import UdpMux


class Endpoint:
    def __init__(
        self, controlling: bool, certificate: RTCCertificate, ports: SharedPorts | None = None
    ) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.errors: list[Exception] = []
        self.session = DtlsSrtpSession(
            certificate,
            ice_controlling=controlling,
            on_rtp=self.on_rtp,
            on_rtcp=self.rtcp.append,
            on_error=self.errors.append,
            ports=ports,
        )

    def on_rtp(self, data: bytes) -> None:
        if data[1] & 0x7F == 100:
            raise RuntimeError("handler bug")
        self.rtp.append(data)

    def remote(self, setup: str) -> RemoteParameters:
        return RemoteParameters(
            ice_ufrag=self.session.ice_ufrag,
            ice_pwd=self.session.ice_pwd,
            fingerprints=self.session.fingerprints(),
            setup=setup,
        )


async def connected_pair(
    ports: SharedPorts | None = None,
    client_ports: SharedPorts | None = None,
    client_addresses: tuple[str, ...] = ("127.0.0.1",),
) -> tuple[Endpoint, Endpoint]:
    """A server endpoint (on ``ports``, the worker's shared ports, when given) and a
    client endpoint (with a socket of its own unless ``client_ports``, on
    ``client_addresses``), connected."""
    use_host_addresses(list(client_addresses))
    certificate = RTCCertificate.generateCertificate()
    server = Endpoint(False, certificate, ports)
    client = Endpoint(True, RTCCertificate.generateCertificate(), client_ports)
    await asyncio.gather(server.session.gather(), client.session.gather())
    for candidate in client.session.local_candidates():
        await server.session.add_remote_candidate(candidate)
    await server.session.add_remote_candidate(None)
    for candidate in server.session.local_candidates():
        await client.session.add_remote_candidate(candidate)
    await client.session.add_remote_candidate(None)
    # The server answers setup:passive (it is the DTLS server); the client sees that.
    await asyncio.wait_for(
        asyncio.gather(
            server.session.start(client.remote("active")),
            client.session.start(server.remote("passive")),
        ),
        10,
    )
    return server, client


@pytest.fixture(params=["socket per transport", "single UDP port"])
async def server_ports(request: pytest.FixtureRequest) -> AsyncIterator[SharedPorts | None]:
    """The server end's sockets: its own (the old mode) or the worker's shared port."""
    if request.param == "socket per transport":
        yield None
        return
    mux = UdpMux(["127.0.0.1"])
    await mux.start()
    ports = SharedPorts(mux, None)
    yield ports
    ports.close()


def rtp(payload_type: int, seq: int, ssrc: int, payload: bytes) -> bytes:
    return build_rtp_packet(
        payload_type=payload_type, sequence_number=seq, timestamp=0, ssrc=ssrc, payload=payload
    )


async def wait_for(predicate, timeout=2.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_rtp_and_rtcp_flow_both_ways(server_ports):
    server, client = await connected_pair(server_ports)
    try:
        for seq in range(5):
            client.session.send_rtp(rtp(96, seq, 0x1234, b"\x10payload"))
        client.session.send_rtcp(bytes(PictureLossIndication(sender_ssrc=1, media_ssrc=2)))
        server.session.send_rtp(rtp(111, 7, 0x4321, b"opus"))
        await wait_for(lambda: len(server.rtp) == 5 and server.rtcp and client.rtp)
        assert server.rtp[0].endswith(b"\x10payload")
        assert client.rtp[0].endswith(b"opus")
    finally:
        await asyncio.gather(server.session.close(), client.session.close())


async def test_corrupt_srtp_and_handler_errors_do_not_kill_the_transport(server_ports):
    server, client = await connected_pair(server_ports)
    try:
        # Garbage that looks like SRTP fails authentication and is counted.
        pair = client.session._connection._nominated[1]
        pair.protocol.transport.sendto(b"\x80\x60" + b"\x00" * 30, pair.remote_addr)
        # So is a datagram longer than any SRTP packet the fast path takes.
        pair.protocol.transport.sendto(b"\x80\x60" + b"\x00" * 3000, pair.remote_addr)
        # A packet that makes the handler raise is reported, not fatal.
        client.session.send_rtp(rtp(100, 1, 5, b"boom"))
        client.session.send_rtp(rtp(96, 2, 5, b"after"))
        await wait_for(lambda: server.rtp and server.errors and server.session.srtp_errors == 2)
        assert server.rtp[-1].endswith(b"after")
        assert isinstance(server.errors[0], RuntimeError)
    finally:
        await asyncio.gather(server.session.close(), client.session.close())


async def test_received_media_runs_the_after_flush_callbacks(server_ports):
    """Periodic work rides on receiving too (the worker's tick, see sfu.worker)."""
    server, client = await connected_pair(server_ports)
    runs = []

    def after_flush() -> None:
        runs.append(len(server.rtp))

    scheduler = flush_scheduler()
    scheduler.add_after_flush(after_flush)
    try:
        for seq in range(5):
            client.session.send_rtp(rtp(96, seq, 0x1234, b"\x10payload"))
        await wait_for(lambda: len(server.rtp) == 5)
        await asyncio.sleep(0)
        # The client's send flushed once (before anything arrived); the server's
        # receiving ran the callbacks again though it sent nothing.
        assert runs[0] == 0
        assert runs[-1] > 0
    finally:
        scheduler.remove_after_flush(after_flush)
        await asyncio.gather(server.session.close(), client.session.close())
