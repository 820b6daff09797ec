"""Every private name of aiortc, aioice, pylibsrtp and uvicorn the project touches, on
the installed versions: an upgrade that moves one fails here, by name, instead of
silently dropping media. The lists live next to the code that uses them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aioice
import aioice.ice
import pylibsrtp
import pytest
import uvicorn
from aiortc import RTCRtpReceiver
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from sfu import aiortc_adapter
from sfu.app import http_server
from sfu.client import _aiortc as client_aiortc

METHODS = [*aiortc_adapter.PRIVATE_SEAMS, *http_server.PRIVATE_SEAMS]
ATTRIBUTES = [
    *aiortc_adapter.PRIVATE_ATTRIBUTES,
    *client_aiortc.PRIVATE_ATTRIBUTES,
    *http_server.PRIVATE_ATTRIBUTES,
]


def _dtls() -> RTCDtlsTransport:
    return RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )


def _uvicorn_config() -> uvicorn.Config:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    config = uvicorn.Config(app, lifespan="off")
    config.load()
    return config


FACTORIES: dict[type, Callable[[], object]] = {
    RTCIceGatherer: RTCIceGatherer,
    aioice.Connection: lambda: aioice.Connection(ice_controlling=True),
    RTCDtlsTransport: _dtls,
    RTCRtpReceiver: lambda: RTCRtpReceiver("video", _dtls()),
    pylibsrtp.Session: lambda: pylibsrtp.Session(
        pylibsrtp.Policy(key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    ),
    HttpToolsProtocol: lambda: HttpToolsProtocol(_uvicorn_config(), ServerState(), {}),
    WebSocketsSansIOProtocol: lambda: WebSocketsSansIOProtocol(
        _uvicorn_config(), ServerState(), {}
    ),
}
"""How to make a real object of each class whose instance attributes are listed."""


def _name(seam: tuple[type, str]) -> str:
    return f"{seam[0].__module__}.{seam[0].__qualname__}.{seam[1]}"


@pytest.mark.parametrize("seam", METHODS, ids=_name)
def test_private_method_exists(seam: tuple[type, str]):
    cls, name = seam
    assert callable(getattr(cls, name, None)), f"{_name(seam)} is gone"


@pytest.mark.parametrize("seam", ATTRIBUTES, ids=_name)
async def test_private_attribute_exists(seam: tuple[type, str]):
    cls, name = seam
    instance = FACTORIES[cls]()
    assert hasattr(instance, name), f"{_name(seam)} is gone"
    await asyncio.sleep(0)


@pytest.mark.parametrize("name", aiortc_adapter.PRIVATE_FUNCTIONS)
def test_private_aioice_function_exists(name: str):
    assert callable(getattr(aioice.ice, name, None)), f"aioice.ice.{name} is gone"
