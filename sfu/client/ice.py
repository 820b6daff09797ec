"""ICE helpers: server-given configuration, trickled candidates, loopback-only gathering."""

from __future__ import annotations

import aioice.ice
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)
from aiortc.sdp import candidate_from_sdp

from sfu.protocol import IceCandidate, IceServer


def use_loopback_ice() -> None:
    """Make aioice gather host candidates on 127.0.0.1 only.

    aioice normally skips the loopback address, so two processes on a machine
    without another usable interface cannot connect. This patches aioice for the
    whole process (every peer connection, also other clients'); it is meant for
    tests and local benchmarks and is not undone.
    """
    aioice.ice.get_host_addresses = _loopback_addresses


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]


def rtc_configuration(ice_servers: list[IceServer], relay_only: bool = False) -> RTCConfiguration:
    """The peer-connection configuration for the ICE servers ``joined`` handed out.

    An empty list means no STUN/TURN at all (aiortc would otherwise use a public
    STUN server). The server bundles every m-line; with aiortc's default
    ``balanced`` policy, an offer adding two m-lines of one kind at once leaves the
    second on a transport that bundling then discards, so ``max-bundle`` is used.
    ``relay_only`` gathers TURN relay candidates only (``iceTransportPolicy=relay``).
    """
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in ice_servers
        ],
        bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL,
    )


async def add_remote_candidate(pc: RTCPeerConnection, candidate: IceCandidate | None) -> None:
    """Add a trickled server candidate (``None``: end of candidates) to ``pc``.

    The client always bundles, so the candidate is applied to the transport of the
    first m-line whatever ``sdpMid`` it names (aiortc would drop one addressed to a
    bundled m-line).
    """
    if candidate is None:
        await pc.addIceCandidate(None)
        return
    transceivers = pc.getTransceivers()
    if not transceivers or transceivers[0].mid is None:
        return
    value = candidate.candidate.removeprefix("a=").removeprefix("candidate:")
    if not value:
        return  # an empty candidate string is also an end-of-candidates marker
    parsed = candidate_from_sdp(value)
    parsed.sdpMid = transceivers[0].mid
    parsed.sdpMLineIndex = 0
    await pc.addIceCandidate(parsed)
