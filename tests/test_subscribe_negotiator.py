"""SubscribeNegotiator without sockets: one outstanding offer, m-lines recycled only
after the subscriber answered them inactive, answers to no offer refused, a rejected
codec never offered again."""

from __future__ import annotations

import pytest

from sfu.bench.participants import create_recvonly_answer
from sfu.consumer import Consumer
from sfu.producer import Producer
from sfu.protocol import ErrorCode, SubscribeOfferMessage
from sfu.rtp.extensions import DEPENDENCY_DESCRIPTOR, TRANSPORT_WIDE_CC
from sfu.sdp import Codec, LocalTransport, SessionDescription, TransportInfo
from sfu.subscribe_negotiator import SubscribeNegotiator
from sfu.worker_api import ProtocolError

LOCAL = LocalTransport(
    ice_ufrag="sfu1",
    ice_pwd="s" * 24,
    fingerprints=[("sha-256", "CD:" * 31 + "CD")],
    candidates=["1 1 udp 2130706431 127.0.0.1 9 typ host"],
)
SUBSCRIBER = LocalTransport(
    ice_ufrag="subs",
    ice_pwd="p" * 24,
    fingerprints=[("sha-256", "AB:" * 31 + "AB")],
    candidates=["1 1 udp 2130706431 127.0.0.1 9 typ host"],
)
VP8, OPUS = Codec(96, "VP8", 90000), Codec(111, "opus", 48000, 2)


def consumer(index: int, codec: Codec = VP8) -> Consumer:
    kind = "audio" if codec is OPUS else "video"
    producer = Producer(f"TR_{index}", f"PA_{index}", kind, "0", [codec], [], "camera", print)
    return Consumer(f"CO_{index}", producer, "PA_sub", lambda header, payload: None)


def answer_to(offer: SubscribeOfferMessage) -> str:
    parsed = SessionDescription.parse(offer.sdp)
    return str(create_recvonly_answer(parsed, SUBSCRIBER, offer.revision))


def mids(offer: SubscribeOfferMessage) -> dict[str, str | None]:
    """Each m-line of the offer and the track it carries (None: inactive)."""
    carried = {mid: track.track_id for mid, track in offer.tracks.items()}
    return {
        m.mid or "": carried.get(m.mid or "") for m in SessionDescription.parse(offer.sdp).media
    }


def test_one_offer_at_a_time_and_changes_meanwhile_go_in_the_next():
    negotiator = SubscribeNegotiator("cname", allow_h264=True)
    first, second = consumer(1), consumer(2)
    negotiator.add(first)
    offer = negotiator.offer(LOCAL)
    assert offer is not None and mids(offer) == {"0": "TR_1"}
    negotiator.add(second)
    assert negotiator.offer(LOCAL) is None, "an offer awaits its answer"
    started: list[TransportInfo] = []
    negotiator.answer(answer_to(offer), offer.revision, started.append)
    assert len(started) == 1 and started[0].ice_ufrag == "subs"
    assert negotiator.accepted() == [(first, 96, None, None)]
    offer = negotiator.offer(LOCAL)
    assert offer is not None and mids(offer) == {"0": "TR_1", "1": "TR_2"}
    assert negotiator.offer(LOCAL) is None


def test_an_m_line_is_recycled_once_answered_inactive():
    negotiator = SubscribeNegotiator("cname", allow_h264=True)
    negotiator.add(consumer(1))
    offer = negotiator.offer(LOCAL)
    assert offer is not None
    negotiator.answer(answer_to(offer), offer.revision, None)
    negotiator.remove("TR_1")
    offer = negotiator.offer(LOCAL)
    assert offer is not None and mids(offer) == {"0": None}
    negotiator.add(consumer(2))
    negotiator.answer(answer_to(offer), offer.revision, None)
    offer = negotiator.offer(LOCAL)
    assert offer is not None and mids(offer) == {"0": "TR_2"}, "the answered slot is reused"


def test_a_consumer_that_comes_and_goes_between_offers_costs_no_m_line():
    negotiator = SubscribeNegotiator("cname", allow_h264=True)
    negotiator.add(consumer(1))
    assert negotiator.remove("TR_1") is not None
    assert negotiator.offer(LOCAL) is None


@pytest.mark.parametrize("revision", [0, 2])
def test_an_answer_to_no_outstanding_offer_is_out_of_order(revision: int):
    negotiator = SubscribeNegotiator("cname", allow_h264=True)
    negotiator.add(consumer(1))
    offer = negotiator.offer(LOCAL)
    assert offer is not None and offer.revision == 1
    with pytest.raises(ProtocolError) as refused:
        negotiator.answer(answer_to(offer), revision, None)
    assert refused.value.code is ErrorCode.OUT_OF_ORDER
    assert negotiator.awaiting == 1, "the offer is still outstanding"


def test_a_bad_answer_or_a_refused_transport_is_bad_sdp_and_leaves_the_offer_out():
    negotiator = SubscribeNegotiator("cname", allow_h264=True)
    negotiator.add(consumer(1))
    offer = negotiator.offer(LOCAL)
    assert offer is not None
    with pytest.raises(ProtocolError) as bad:
        negotiator.answer("v=0\r\nnonsense", offer.revision, None)
    assert bad.value.code is ErrorCode.BAD_SDP

    def refuse(transport: TransportInfo) -> None:
        raise ValueError("fingerprint refused")

    with pytest.raises(ProtocolError) as refused:
        negotiator.answer(answer_to(offer), offer.revision, refuse)
    assert refused.value.code is ErrorCode.BAD_SDP and "fingerprint" in str(refused.value)
    negotiator.answer(answer_to(offer), offer.revision, None)
    assert negotiator.awaiting is None


def test_an_av1_track_is_offered_with_the_dependency_descriptor():
    negotiator = SubscribeNegotiator("cname", allow_h264=False)
    av1, vp8 = consumer(1, Codec(45, "AV1", 90000)), consumer(2)
    negotiator.add(av1)
    negotiator.add(vp8)
    offer = negotiator.offer(LOCAL)
    assert offer is not None
    sections = SessionDescription.parse(offer.sdp).media
    assert [{e.uri for e in m.header_extensions} for m in sections] == [
        {DEPENDENCY_DESCRIPTOR, TRANSPORT_WIDE_CC},
        {TRANSPORT_WIDE_CC},
    ]
    negotiator.answer(answer_to(offer), offer.revision, None)
    assert av1.forward == av1._forward_selected, "its subscriber gets decode targets selected"
    assert "forward" not in vars(vp8), "a VP8 consumer keeps the plain forward"
