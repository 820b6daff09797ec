import re
from dataclasses import replace
from pathlib import Path

import aiortc.sdp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.sdp import (
    Codec,
    HeaderExtension,
    LocalTransport,
    OutgoingMedia,
    SdpError,
    SessionDescription,
    Simulcast,
    SsrcGroup,
    accepted_data_channel,
    bundle_transport,
    create_publish_answer,
    create_subscribe_offer,
    default_outgoing_codecs,
    outgoing_codecs_for,
    parse_subscribe_answer,
)
from sfu.sdp.description import MAX_LINES
from sfu.sdp.negotiation import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    DEPENDENCY_DESCRIPTOR_URI,
    MAX_SSRCS_PER_SECTION,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
FIXTURE_NAMES = [
    "chrome-plain-offer",
    "chrome-simulcast-offer",
    "firefox-plain-offer",
    "firefox-simulcast-offer",
]
MAX_BUNDLE = "firefox-max-bundle-offer"
"""Firefox 153 on the demo page (bundlePolicy max-bundle): audio, simulcast video and a
data channel; port 0 and a=bundle-only on every m-line after the first."""
ALL_FIXTURES = [
    *FIXTURE_NAMES,
    MAX_BUNDLE,
    "server-subscribe-offer-to-firefox",
    "firefox-subscribe-answer",
]

LOCAL = LocalTransport(
    ice_ufrag="srvU",
    ice_pwd="serverpasswordserverpass",
    fingerprints=[("sha-256", "01:23:45:67:89:AB:CD:EF")],
    candidates=["1 1 udp 2130706431 192.0.2.10 40000 typ host"],
    ice_lite=True,
)


def fixture_text(name: str) -> str:
    return (FIXTURES / f"{name}.sdp").read_bytes().decode()


def load(name: str) -> SessionDescription:
    return SessionDescription.parse(fixture_text(name))


# Parsing the browser fixtures


def test_chrome_plain_offer():
    desc = load("chrome-plain-offer")
    assert desc.session_id == 2653330898438536983
    assert desc.session_version == 2
    assert desc.bundle_groups == [["0", "1"]]
    assert desc.extmap_allow_mixed
    assert desc.msid_semantic == "WMS"
    audio, video = desc.media
    assert (audio.kind, audio.mid, audio.direction, audio.port) == ("audio", "0", "sendonly", 44076)
    assert audio.host == "127.0.0.1"
    assert audio.protocol == "UDP/TLS/RTP/SAVPF"
    assert audio.formats == ["111", "63", "9", "0", "8", "13", "110", "126"]
    assert [c.payload_type for c in audio.codecs] == [111, 63, 9, 0, 8, 13, 110, 126]
    opus = audio.codecs[0]
    assert opus == Codec(
        111, "opus", 48000, 2, {"minptime": "10", "useinbandfec": "1"}, ["transport-cc"]
    )
    assert opus.mime_type == "audio/opus"
    assert audio.codecs[1].parameters == {"111/111": ""}
    assert audio.rtcp_mux and audio.rtcp_rsize
    assert audio.ssrcs == {
        2463475952: {
            "cname": "/8k/cikB3hCLVZjd",
            "msid": "- 5e310c75-bcdc-4963-9509-ac9344e97cdf",
        }
    }
    assert ("rtcp-xr", "rcvr-rtt=all") in audio.attributes
    assert ("rtcp", "9 IN IP4 0.0.0.0") in audio.attributes
    assert len(audio.candidates) == 8
    assert audio.candidates[0].startswith("719245007 1 udp 2122194687 127.0.0.1 44076 typ host")
    assert not audio.end_of_candidates
    assert audio.header_extension_ids() == {
        AUDIO_LEVEL_URI: 1,
        ABS_SEND_TIME_URI: 2,
        TRANSPORT_CC_URI: 3,
        MID_URI: 4,
    }

    assert video.mid == "1"
    assert video.msid == "- 2d8bf84f-3f7a-4203-9142-eeec81207b8e"
    vp8, rtx = video.codecs[:2]
    assert vp8.mime_type == "video/VP8"
    assert vp8.rtcp_feedback == ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    assert (rtx.name, rtx.apt, rtx.is_rtx) == ("rtx", 96, True)
    assert vp8.apt is None
    h264 = video.codec(108)
    assert h264 is not None
    assert h264.parameters == {
        "level-asymmetry-allowed": "1",
        "packetization-mode": "1",
        "profile-level-id": "42e01f",
    }
    assert video.ssrc_groups == [SsrcGroup("FID", [1501276569, 2591905618])]
    assert video.rids == [] and video.simulcast is None
    assert video.header_extension_ids()[RID_URI] == 10
    assert video.header_extension_ids()[TRANSPORT_CC_URI] == 3

    transport = desc.transport(video)
    assert transport.ice_ufrag == "Hc7w"
    assert transport.ice_pwd == "f2SzFAQYBn9O4vGT9kUW0AgK"
    assert transport.ice_options == "trickle"
    assert transport.setup == "actpass"
    assert transport.fingerprints == [
        (
            "sha-256",
            "66:10:F4:2F:32:57:3F:96:0A:8B:C9:91:C4:7E:2D:AB:"
            "B3:60:18:55:54:94:CD:53:65:29:77:D6:88:21:A9:C8",
        )
    ]


def test_chrome_simulcast_offer():
    desc = load("chrome-simulcast-offer")
    video = desc.media[1]
    assert [(r.id, r.direction, r.parameters) for r in video.rids] == [
        ("q", "send", ""),
        ("h", "send", ""),
        ("f", "send", ""),
    ]
    assert video.simulcast == Simulcast(send=[["q"], ["h"], ["f"]])
    assert video.ssrcs == {}
    assert video.ssrc_groups == []
    ids = video.header_extension_ids()
    assert (ids[MID_URI], ids[RID_URI], ids[REPAIRED_RID_URI]) == (4, 10, 11)


def test_firefox_plain_offer():
    desc = load("firefox-plain-offer")
    assert desc.origin_username == "mozilla...THIS_IS_SDPARTA-99.0"
    assert desc.session_version == 0
    assert desc.ice_options == "trickle"
    assert desc.msid_semantic == "WMS *"
    assert not desc.extmap_allow_mixed
    audio, video = desc.media
    assert audio.direction == "sendrecv"
    assert audio.extmap_allow_mixed
    assert audio.header_extensions[1] == HeaderExtension(
        2, "urn:ietf:params:rtp-hdrext:csrc-audio-level", "recvonly"
    )
    assert audio.header_extension_ids()[MID_URI] == 3
    assert audio.header_extension_ids()[TRANSPORT_CC_URI] == 7
    # fmtp lines come before rtpmap lines in Firefox offers
    assert audio.codec(109) == Codec(
        109,
        "opus",
        48000,
        2,
        {"maxplaybackrate": "48000", "stereo": "1", "useinbandfec": "1"},
        ["transport-cc"],
    )
    assert audio.codec(9) == Codec(9, "G722", 8000, 1, {}, ["transport-cc"])
    assert audio.codec(101) == Codec(101, "telephone-event", 8000, 1, {"0-15": ""})
    assert [c.payload_type for c in video.codecs] == [120, 124, 121, 125, 99, 100, 123, 122, 119]
    assert video.codec(124) is not None and video.codec(124).apt == 120
    assert video.codec(120).parameters == {"max-fs": "12288", "max-fr": "60"}
    assert video.ssrc_groups == [SsrcGroup("FID", [1234234601, 364159393])]
    assert video.candidates == []

    # Firefox puts the fingerprint at session level only.
    assert video.fingerprints == []
    transport = desc.transport(video)
    assert transport.fingerprints == desc.fingerprints
    assert transport.fingerprints[0][0] == "sha-256"
    assert transport.fingerprints[0][1].startswith("A4:3D:D4:73")
    assert transport.ice_ufrag == "889b5785"
    assert transport.ice_options == "trickle"
    assert transport.setup == "actpass"


def test_firefox_simulcast_offer():
    desc = load("firefox-simulcast-offer")
    video = desc.media[1]
    assert video.direction == "sendonly"
    assert [r.id for r in video.rids] == ["q", "h", "f"]
    assert video.simulcast == Simulcast(send=[["q"], ["h"], ["f"]])
    assert video.ssrc_groups == [
        SsrcGroup("FID", [4133559907, 1754262910]),
        SsrcGroup("FID", [3149719662, 458901047]),
        SsrcGroup("FID", [4053522862, 136507808]),
    ]
    assert len(video.ssrcs) == 6
    rid_ext = next(e for e in video.header_extensions if e.uri == RID_URI)
    assert (rid_ext.id, rid_ext.direction) == (9, "sendonly")


def test_firefox_max_bundle_offer():
    desc = load(MAX_BUNDLE)
    assert desc.bundle_groups == [["0", "1", "2"]]
    assert [m.kind for m in desc.media] == ["audio", "video", "application"]
    assert [m.port for m in desc.media] == [33162, 0, 0]
    assert [m.bundle_only for m in desc.media] == [False, True, True]
    assert not any(name == "bundle-only" for m in desc.media for name, _ in m.attributes)
    assert "a=bundle-only\r\n" in str(desc.media[1])
    assert len(desc.media[0].candidates) == 8 and desc.media[0].end_of_candidates
    assert desc.media[1].candidates == [] and not desc.media[1].end_of_candidates


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_round_trip(name: str):
    desc = load(name)
    text = str(desc)
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    assert SessionDescription.parse(text) == desc
    # LF-only input parses the same
    assert SessionDescription.parse(fixture_text(name).replace("\r\n", "\n")) == desc


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_aiortc_parses_our_output(name: str):
    desc = load(name)
    theirs = aiortc.sdp.SessionDescription.parse(str(desc))
    assert [m.rtp.muxId for m in theirs.media] == [m.mid for m in desc.media]
    assert [len(m.rtp.codecs) for m in theirs.media] == [len(m.codecs) for m in desc.media]


def test_unknown_attributes_are_kept():
    text = fixture_text("chrome-plain-offer").replace(
        "a=mid:1\r\n", "a=mid:1\r\na=x-custom:some value\r\na=x-flag\r\n"
    )
    video = SessionDescription.parse(text).media[1]
    assert ("x-custom", "some value") in video.attributes
    assert ("x-flag", None) in video.attributes
    assert "a=x-custom:some value\r\na=x-flag\r\n" in str(video)


def test_rtcp_fb_wildcard_and_paused_simulcast():
    text = (
        "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97\n"
        "a=rtpmap:96 VP8/90000\na=rtpmap:97 VP9/90000\na=rtcp-fb:* nack\n"
        "a=rid:a send\na=rid:b send pt=96;max-width=320\na=rid:c recv\n"
        "a=simulcast:send a;~b recv c\n"
    )
    desc = SessionDescription.parse(text)
    video = desc.media[0]
    assert [c.rtcp_feedback for c in video.codecs] == [["nack"], ["nack"]]
    assert video.simulcast == Simulcast(send=[["a"], ["b"]], recv=[["c"]], paused={"b"})
    assert video.rids[1].parameters == "pt=96;max-width=320"
    assert "a=simulcast:send a;~b recv c\r\n" in str(desc)
    assert SessionDescription.parse(str(desc)) == desc


# Publish answers


def answer_for(name: str, allow_h264: bool = False):
    offer = load(name)
    answer, published = create_publish_answer(offer, LOCAL, allow_h264=allow_h264)
    # What we send must survive our own parser and aiortc's.
    assert SessionDescription.parse(str(answer)) == answer
    aiortc.sdp.SessionDescription.parse(str(answer))
    return offer, answer, published


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_publish_answer(name: str):
    offer, answer, published = answer_for(name)
    assert answer.bundle_groups == [["0", "1"]]
    assert answer.ice_lite
    assert [m.mid for m in answer.media] == ["0", "1"]
    assert [p.mid for p in published] == ["0", "1"]
    for offered, answered, pub in zip(offer.media, answer.media, published, strict=True):
        assert answered.port == 9
        assert answered.direction == "recvonly"
        assert answered.setup == "passive"
        assert answered.ice_ufrag == "srvU" and answered.ice_pwd == LOCAL.ice_pwd
        assert answered.fingerprints == LOCAL.fingerprints
        assert answered.candidates == LOCAL.candidates and answered.end_of_candidates
        assert answered.rtcp_mux
        assert answered.rtcp_rsize == offered.rtcp_rsize
        assert answered.extmap_allow_mixed == offered.extmap_allow_mixed
        offered_ids = offered.header_extension_ids()
        for uri, ext_id in answered.header_extension_ids().items():
            assert offered_ids[uri] == ext_id
        assert pub.header_extensions == answered.header_extension_ids()
        # the published media lists the primary codec first, the answer RED first
        assert sorted(pub.codecs, key=lambda c: c.name != "red") == answered.codecs
        assert answered.formats == [str(c.payload_type) for c in answered.codecs]
        assert pub.msid == offered.msid
        for codec in answered.codecs:
            assert set(codec.rtcp_feedback) <= {
                "nack",
                "nack pli",
                "ccm fir",
                "goog-remb",
                "transport-cc",
            }
            assert offered.codec(codec.payload_type).name == codec.name

    audio, video = answer.media
    # Chrome offers RED (RFC 2198) for Opus: accepted after the primary codec.
    red = ["audio/red"] if name.startswith("chrome") else []
    assert [c.mime_type for c in audio.codecs] == [*red, "audio/opus"]
    assert audio.codecs[0].channels == 2
    assert set(audio.header_extension_ids()) == {
        AUDIO_LEVEL_URI,
        MID_URI,
        TRANSPORT_CC_URI,
    } | ({ABS_SEND_TIME_URI} if name.startswith("chrome") else set())
    assert [c.name for c in video.codecs] == ["VP8", "rtx"]
    assert video.codecs[1].apt == video.codecs[0].payload_type
    vp8_pt = 96 if name.startswith("chrome") else 120
    assert video.codecs[0].payload_type == vp8_pt
    assert {MID_URI, TRANSPORT_CC_URI, ABS_SEND_TIME_URI} <= set(video.header_extension_ids())
    assert published[1].codecs[0].mime_type == "video/VP8"


def test_publish_answer_chrome_session_level_extmap_allow_mixed():
    _, answer, _ = answer_for("chrome-plain-offer")
    assert answer.extmap_allow_mixed
    assert not any(m.extmap_allow_mixed for m in answer.media)
    _, answer, _ = answer_for("firefox-plain-offer")
    assert not answer.extmap_allow_mixed
    assert all(m.extmap_allow_mixed for m in answer.media)


@pytest.mark.parametrize("name", ["chrome-simulcast-offer", "firefox-simulcast-offer"])
def test_publish_answer_simulcast(name: str):
    offer, answer, published = answer_for(name)
    video = answer.media[1]
    assert [(r.id, r.direction) for r in video.rids] == [
        ("q", "recv"),
        ("h", "recv"),
        ("f", "recv"),
    ]
    assert video.simulcast == Simulcast(recv=[["q"], ["h"], ["f"]])
    assert "a=simulcast:recv q;h;f\r\n" in str(answer)
    assert published[1].rids == ["q", "h", "f"]
    ids = published[1].header_extensions
    offered_ids = offer.media[1].header_extension_ids()
    assert ids[RID_URI] == offered_ids[RID_URI]
    assert ids[REPAIRED_RID_URI] == offered_ids[REPAIRED_RID_URI]
    assert published[0].rids == []
    assert answer.media[0].rids == [] and answer.media[0].simulcast is None


def test_publish_answer_firefox_extension_directions():
    _, answer, _ = answer_for("firefox-simulcast-offer")
    audio, video = answer.media
    # a=extmap:2/recvonly csrc-audio-level is neither supported nor sent by the offerer
    assert 2 not in [e.id for e in audio.header_extensions]
    rid_ext = next(e for e in video.header_extensions if e.uri == RID_URI)
    assert (rid_ext.id, rid_ext.direction) == (9, "recvonly")
    assert "a=extmap:9/recvonly urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n" in str(answer)


def test_publish_answer_ssrcs():
    _, _, published = answer_for("firefox-simulcast-offer")
    video = published[1]
    assert video.ssrcs == [4133559907, 3149719662, 4053522862]
    assert video.rtx_ssrc == {
        4133559907: 1754262910,
        3149719662: 458901047,
        4053522862: 136507808,
    }
    assert video.cname == "{bca0f75a-6298-4629-a518-0806616fb304}"

    _, _, published = answer_for("chrome-plain-offer")
    assert published[0].ssrcs == [2463475952] and published[0].rtx_ssrc == {}
    assert published[0].cname == "/8k/cikB3hCLVZjd"
    assert published[1].ssrcs == [1501276569]
    assert published[1].rtx_ssrc == {1501276569: 2591905618}

    _, _, published = answer_for("chrome-simulcast-offer")
    assert published[1].ssrcs == [] and published[1].cname is None


def without_vp8(desc: SessionDescription) -> SessionDescription:
    video = desc.media[1]
    drop = {96, 97}
    video.codecs = [c for c in video.codecs if c.payload_type not in drop]
    video.formats = [f for f in video.formats if int(f) not in drop]
    return SessionDescription.parse(str(desc))


def test_publish_answer_h264_only_when_allowed():
    offer = load("chrome-plain-offer")
    _, published = create_publish_answer(offer, LOCAL, allow_h264=True)
    assert [c.name for c in published[1].codecs] == ["VP8", "rtx"]  # VP8 stays preferred

    h264_only = without_vp8(offer)
    answer, published = create_publish_answer(h264_only, LOCAL)
    assert answer.media[1].port == 0
    assert [p.mid for p in published] == ["0"]
    assert answer.bundle_groups == [["0"]]

    answer, published = create_publish_answer(h264_only, LOCAL, allow_h264=True)
    h264, rtx = answer.media[1].codecs
    assert (h264.payload_type, h264.name) == (108, "H264")
    assert h264.parameters["profile-level-id"] == "42e01f"
    assert h264.parameters["packetization-mode"] == "1"
    assert (rtx.payload_type, rtx.apt) == (109, 108)
    assert [p.mid for p in published] == ["0", "1"]


def test_publish_answer_h264_falls_back_to_offered_profile():
    offer = without_vp8(load("chrome-plain-offer"))
    video = offer.media[1]
    drop = {108, 109}
    video.codecs = [c for c in video.codecs if c.payload_type not in drop]
    video.formats = [f for f in video.formats if int(f) not in drop]
    answer, _ = create_publish_answer(offer, LOCAL, allow_h264=True)
    h264 = answer.media[1].codecs[0]
    assert (h264.payload_type, h264.parameters["profile-level-id"]) == (102, "42001f")


def test_publish_answer_rejects_unusable_sections():
    offer = load("firefox-plain-offer")
    offer.media[0].direction = "recvonly"  # nothing to receive
    unusable = ("VP8", "VP9", "AV1")
    offer.media[1].codecs = [c for c in offer.media[1].codecs if c.name not in unusable]
    offer.media[1].formats = [str(c.payload_type) for c in offer.media[1].codecs]
    offer = SessionDescription.parse(str(offer))
    offer.media.append(
        replace(
            offer.media[0],
            kind="application",
            protocol="UDP/DTLS/SCTP",
            formats=["webrtc-datachannel"],
            codecs=[],
            mid="2",
            port=0,  # a data channel section the offerer itself disabled
            sctp_port=5000,
        )
    )
    offer.bundle_groups = [["0", "1", "2"]]
    answer, published = create_publish_answer(offer, LOCAL)
    assert published == []
    assert answer.bundle_groups == []
    assert [m.port for m in answer.media] == [0, 0, 0]
    assert [m.mid for m in answer.media] == ["0", "1", "2"]
    assert all(m.direction == "inactive" and m.codecs == [] for m in answer.media)
    assert answer.media[2].formats == ["webrtc-datachannel"]
    assert "m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n" in str(answer)
    assert SessionDescription.parse(str(answer)) == answer


def test_publish_answer_firefox_max_bundle():
    offer, answer, published = answer_for(MAX_BUNDLE)
    assert answer.bundle_groups == [["0", "1", "2"]]
    assert [m.port for m in answer.media] == [9, 9, 9]
    assert [m.direction for m in answer.media] == ["recvonly", "recvonly", "sendrecv"]
    assert not any(m.bundle_only for m in answer.media)  # never in an answer (RFC 8843)
    assert "bundle-only" not in str(answer)
    audio, video, application = answer.media
    assert [c.mime_type for c in audio.codecs] == ["audio/opus"]
    assert [(c.payload_type, c.name) for c in video.codecs] == [(120, "VP8"), (124, "rtx")]
    assert [(r.id, r.direction) for r in video.rids] == [(rid, "recv") for rid in "qhf"]
    assert video.simulcast == Simulcast(recv=[["q"], ["h"], ["f"]])
    assert "a=simulcast:recv q;h;f\r\n" in str(answer)
    assert [p.mid for p in published] == ["0", "1"]
    assert published[1].rids == ["q", "h", "f"]
    assert published[1].ssrcs == [351470292, 3425377974, 1263511571]
    assert published[1].rtx_ssrc == {
        351470292: 3005207378,
        3425377974: 956476489,
        1263511571: 172174143,
    }
    assert published[1].header_extensions[RID_URI] == 9
    assert published[1].header_extensions[REPAIRED_RID_URI] == 10
    assert application.formats == ["webrtc-datachannel"] and application.sctp_port == 5000
    sctp = accepted_data_channel(offer, answer)
    assert sctp is not None
    assert (sctp.mid, sctp.port, sctp.max_message_size) == ("2", 5000, 1073741823)
    # The BUNDLE transport is the first m-line's: its ICE credentials and candidates.
    transport = bundle_transport(offer, answer)
    assert (transport.ice_ufrag, transport.ice_pwd) == ("af93f42f", offer.media[0].ice_pwd)
    assert transport.candidates == offer.media[0].candidates and transport.end_of_candidates
    assert transport.fingerprints == offer.fingerprints and transport.setup == "actpass"


def without_bundle_only(desc: SessionDescription, index: int) -> SessionDescription:
    desc.media[index].bundle_only = False
    return SessionDescription.parse(str(desc))


def test_publish_answer_rejects_port_zero_without_bundle_only():
    # Port 0 without a=bundle-only is the offerer disabling the m-line (RFC 3264): it is
    # rejected in the answer, and the rest of the session goes on.
    offer = without_bundle_only(load(MAX_BUNDLE), 1)
    answer, published = create_publish_answer(offer, LOCAL)
    assert [m.port for m in answer.media] == [9, 0, 9]
    assert answer.media[1].direction == "inactive" and answer.media[1].codecs == []
    assert answer.bundle_groups == [["0", "2"]]
    assert [p.mid for p in published] == ["0"]
    assert accepted_data_channel(offer, answer) is not None

    offer = without_bundle_only(load(MAX_BUNDLE), 2)
    answer, published = create_publish_answer(offer, LOCAL)
    assert [m.port for m in answer.media] == [9, 9, 0]
    assert answer.bundle_groups == [["0", "1"]]
    assert accepted_data_channel(offer, answer) is None


def test_publish_answer_bundle_only_needs_the_group():
    offer = load(MAX_BUNDLE)
    offer.bundle_groups = [["0", "2"]]  # video is bundle-only but outside every group
    answer, _ = create_publish_answer(SessionDescription.parse(str(offer)), LOCAL)
    assert [m.port for m in answer.media] == [9, 0, 9]
    assert answer.bundle_groups == [["0", "2"]]

    # The offerer-tagged m-line carries the BUNDLE address: port 0 rejects it even with
    # a=bundle-only; the bundle-only m-lines after it still join the group.
    offer = load(MAX_BUNDLE)
    offer.media[0].port = 0
    offer.media[0].bundle_only = True
    offer = SessionDescription.parse(str(offer))
    answer, _ = create_publish_answer(offer, LOCAL)
    assert [m.port for m in answer.media] == [0, 9, 9]
    assert answer.bundle_groups == [["1", "2"]]
    assert bundle_transport(offer, answer).candidates == offer.media[0].candidates


def test_bundle_transport_gathers_every_accepted_section():
    offer = load("chrome-plain-offer")
    offer.media[1].candidates = ["7 1 udp 2113937151 192.0.2.7 5000 typ host"]
    offer.media[1].end_of_candidates = True
    answer, _ = create_publish_answer(offer, LOCAL)
    transport = bundle_transport(offer, answer)
    assert transport.candidates == [*offer.media[0].candidates, *offer.media[1].candidates]
    assert transport.end_of_candidates
    answer.bundle_groups = []
    with pytest.raises(SdpError, match="accepted no m= section"):
        bundle_transport(offer, answer)


def test_publish_answer_needs_bundle():
    offer = load("chrome-plain-offer")
    offer.bundle_groups = []
    with pytest.raises(SdpError, match="BUNDLE"):
        create_publish_answer(offer, LOCAL)


# Subscribe offers and answers


def outgoing_media() -> list[OutgoingMedia]:
    audio_exts = [HeaderExtension(1, AUDIO_LEVEL_URI), HeaderExtension(4, MID_URI)]
    video_exts = [
        HeaderExtension(3, TRANSPORT_CC_URI),
        HeaderExtension(4, MID_URI),
        HeaderExtension(2, ABS_SEND_TIME_URI),
    ]
    return [
        OutgoingMedia(
            "0", "audio", default_outgoing_codecs("audio"), audio_exts,
            ssrc=1111, rtx_ssrc=None, cname="srv", stream_id="alice", track_id="alice-mic",
            active=True,
        ),
        OutgoingMedia(
            "1", "video", default_outgoing_codecs("video", allow_h264=True), video_exts,
            ssrc=2222, rtx_ssrc=3333, cname="srv", stream_id="alice", track_id="alice-cam",
            active=True,
        ),
        OutgoingMedia(
            "2", "video", default_outgoing_codecs("video"), video_exts,
            ssrc=4444, rtx_ssrc=5555, cname="srv", stream_id="bob", track_id="bob-cam",
            active=False,
        ),
    ]  # fmt: skip


def test_default_outgoing_codecs():
    (opus,) = default_outgoing_codecs("audio")
    assert (opus.payload_type, opus.mime_type, opus.channels) == (111, "audio/opus", 2)
    assert [(c.payload_type, c.name, c.apt) for c in default_outgoing_codecs("video")] == [
        (96, "VP8", None),
        (97, "rtx", 96),
    ]
    video = default_outgoing_codecs("video", allow_h264=True)
    assert [(c.payload_type, c.apt) for c in video] == [
        (96, None),
        (97, 96),
        (102, None),
        (103, 102),
    ]
    assert video[2].parameters["packetization-mode"] == "1"
    assert "nack pli" in video[0].rtcp_feedback and "transport-cc" in video[0].rtcp_feedback
    # fresh objects every call
    default_outgoing_codecs("audio")[0].parameters.clear()
    assert default_outgoing_codecs("audio")[0].parameters
    with pytest.raises(ValueError):
        default_outgoing_codecs("application")


def test_subscribe_offer():
    offer = create_subscribe_offer(LOCAL, outgoing_media(), session_id=42, session_version=3)
    text = str(offer)
    assert SessionDescription.parse(text) == offer
    aiortc_offer = aiortc.sdp.SessionDescription.parse(text)
    assert [m.direction for m in aiortc_offer.media] == ["sendonly", "sendonly", "inactive"]

    assert (offer.session_id, offer.session_version) == (42, 3)
    assert offer.bundle_groups == [["0", "1", "2"]]
    assert offer.msid_semantic == "WMS *"
    assert offer.extmap_allow_mixed and offer.ice_lite
    assert "a=group:BUNDLE 0 1 2\r\n" in text
    assert "a=msid-semantic: WMS *\r\n" in text
    audio, video, idle = offer.media
    assert [m.direction for m in offer.media] == ["sendonly", "sendonly", "inactive"]
    for section in offer.media:
        assert section.setup == "actpass"
        assert section.rtcp_mux and section.rtcp_rsize
        assert section.candidates == LOCAL.candidates and section.end_of_candidates
        assert section.ice_ufrag == LOCAL.ice_ufrag
    assert audio.formats == ["111"]
    assert audio.msid == "alice alice-mic"
    assert audio.ssrcs == {1111: {"cname": "srv", "msid": "alice alice-mic"}}
    assert audio.ssrc_groups == []
    assert video.formats == ["96", "97", "102", "103"]
    assert video.ssrc_groups == [SsrcGroup("FID", [2222, 3333])]
    assert "a=ssrc-group:FID 2222 3333\r\n" in text
    assert set(video.ssrcs) == {2222, 3333}
    assert video.header_extension_ids() == {TRANSPORT_CC_URI: 3, MID_URI: 4, ABS_SEND_TIME_URI: 2}
    assert idle.mid == "2" and idle.msid is None and idle.ssrcs == {}
    assert idle.formats == ["96", "97"]


def test_subscribe_offer_rejects_duplicate_mids():
    media = outgoing_media()
    media[2].mid = "1"
    with pytest.raises(SdpError, match="duplicate mids"):
        create_subscribe_offer(LOCAL, media, 1, 1)


def browser_answer(offer: SessionDescription) -> SessionDescription:
    """A subscriber answer written by hand, the way Chrome would answer our offer."""
    text = (
        "v=0\r\n"
        "o=- 555 2 IN IP4 127.0.0.1\r\n"
        "s=-\r\n"
        "t=0 0\r\n"
        "a=group:BUNDLE 0 1 2\r\n"
        "a=extmap-allow-mixed\r\n"
        "a=msid-semantic: WMS\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        "c=IN IP4 0.0.0.0\r\n"
        "a=ice-ufrag:brws\r\n"
        "a=ice-pwd:browserpasswordbrowserpa\r\n"
        "a=fingerprint:sha-256 AA:BB:CC\r\n"
        "a=setup:active\r\n"
        "a=mid:0\r\n"
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        "a=recvonly\r\n"
        "a=rtcp-mux\r\n"
        "a=rtpmap:111 opus/48000/2\r\n"
        "a=rtcp-fb:111 transport-cc\r\n"
        "a=fmtp:111 minptime=10;useinbandfec=1\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"
        "c=IN IP4 0.0.0.0\r\n"
        "a=ice-ufrag:brws\r\n"
        "a=ice-pwd:browserpasswordbrowserpa\r\n"
        "a=fingerprint:sha-256 AA:BB:CC\r\n"
        "a=setup:active\r\n"
        "a=mid:1\r\n"
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n"
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        "a=recvonly\r\n"
        "a=rtcp-mux\r\n"
        "a=rtcp-rsize\r\n"
        "a=rtpmap:96 VP8/90000\r\n"
        "a=rtcp-fb:96 nack\r\n"
        "a=rtcp-fb:96 nack pli\r\n"
        "a=rtpmap:97 rtx/90000\r\n"
        "a=fmtp:97 apt=96\r\n"
        "m=video 0 UDP/TLS/RTP/SAVPF 96\r\n"
        "c=IN IP4 0.0.0.0\r\n"
        "a=mid:2\r\n"
        "a=inactive\r\n"
    )
    return SessionDescription.parse(text)


def test_parse_subscribe_answer():
    offer = create_subscribe_offer(LOCAL, outgoing_media(), session_id=42, session_version=3)
    negotiated = parse_subscribe_answer(browser_answer(offer), offer)
    assert list(negotiated) == ["0", "1", "2"]
    audio, video, idle = negotiated.values()
    assert (audio.kind, audio.rejected, audio.direction) == ("audio", False, "recvonly")
    assert [c.payload_type for c in audio.codecs] == [111]
    assert audio.header_extensions == {MID_URI: 4}
    assert [(c.name, c.apt) for c in video.codecs] == [("VP8", None), ("rtx", 96)]
    assert video.codecs[0].rtcp_feedback == ["nack", "nack pli"]
    assert video.header_extensions == {TRANSPORT_CC_URI: 3, MID_URI: 4}
    assert idle.rejected and idle.codecs == [] and idle.header_extensions == {}


def test_firefox_subscribe_answer():
    """Firefox 153 on the demo page answering the server's offer of a Chromium
    publisher's audio and video (both captured): it accepts both m-lines into BUNDLE
    with their own ports (no port 0 in an answer), and the answer passes the check."""
    offer = load("server-subscribe-offer-to-firefox")
    answer = load("firefox-subscribe-answer")
    assert answer.bundle_groups == [["0", "1"]]
    assert [m.port for m in answer.media] == [42551, 9]
    negotiated = parse_subscribe_answer(answer, offer)
    audio, video = negotiated["0"], negotiated["1"]
    assert (audio.rejected, audio.direction) == (False, "recvonly")
    assert (video.rejected, video.direction) == (False, "recvonly")
    assert [(c.payload_type, c.name) for c in audio.codecs] == [(111, "opus")]
    assert [(c.payload_type, c.name) for c in video.codecs] == [(96, "VP8")]
    assert video.codecs[0].rtcp_feedback == [
        "nack",
        "nack pli",
        "ccm fir",
        "goog-remb",
        "transport-cc",
    ]
    assert video.header_extensions == {TRANSPORT_CC_URI: 3}
    transport = answer.transport(answer.media[0])
    assert transport.setup == "active" and transport.ice_ufrag == "7e81b93d"
    assert len(transport.candidates) == 4 and transport.end_of_candidates


def test_parse_subscribe_answer_mismatches():
    offer = create_subscribe_offer(LOCAL, outgoing_media(), session_id=42, session_version=3)

    answer = browser_answer(offer)
    answer.media.pop()
    with pytest.raises(SdpError, match="mids"):
        parse_subscribe_answer(answer, offer)

    answer = browser_answer(offer)
    answer.media[0].mid, answer.media[1].mid = "1", "0"
    with pytest.raises(SdpError, match="mids"):
        parse_subscribe_answer(answer, offer)

    answer = browser_answer(offer)
    answer.media[1].header_extensions[0].id = 9
    with pytest.raises(SdpError, match="does not match the offer"):
        parse_subscribe_answer(answer, offer)

    answer = browser_answer(offer)
    answer.media[1].codecs[0].payload_type = 100
    with pytest.raises(SdpError, match="not offered"):
        parse_subscribe_answer(answer, offer)

    answer = browser_answer(offer)
    answer.media[0].setup = "passive"
    with pytest.raises(SdpError, match="setup"):
        parse_subscribe_answer(answer, offer)


# Malformed input

HEADER = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\n"
HUGE = "9" * 5000
VIDEO = HEADER + "m=video 9 UDP/TLS/RTP/SAVPF 96 97\na=mid:0\n"

MALFORMED = [
    pytest.param("", 1, "empty", id="empty"),
    pytest.param("\r\n  \r\n", 1, "empty", id="blank"),
    pytest.param("v=1\n", 1, "v=0", id="version"),
    pytest.param("o=- 1 1 IN IP4 127.0.0.1\nv=0\n", 1, "v=0", id="no-version-first"),
    pytest.param("v=0\ns=-\n", 2, "o= line", id="no-origin"),
    pytest.param("v=0\n\n", 2, "missing o=", id="only-version"),
    pytest.param("v=0\no=- x 1 IN IP4 1.2.3.4\n", 2, "session id", id="origin-id"),
    pytest.param("v=0\no=- 1 1 IN IP4\n", 2, "o= must", id="origin-fields"),
    pytest.param(HEADER + "junk\n", 5, "<type>=<value>", id="not-a-line"),
    pytest.param(HEADER + "c=IN IP4\n", 5, "c= must", id="connection"),
    pytest.param(HEADER + "m=video 9 UDP/TLS/RTP/SAVPF\n", 5, "m= needs", id="m-no-formats"),
    pytest.param(HEADER + "m=video x UDP/TLS/RTP/SAVPF 96\n", 5, "port", id="m-port"),
    pytest.param(HEADER + "m=video 9 UDP/TLS/RTP/SAVPF 96 vp8\n", 5, "payload type", id="m-pt"),
    pytest.param(HEADER + "m=video 9 UDP/TLS/RTP/SAVPF 128\n", 5, "range", id="m-pt-range"),
    pytest.param(HEADER + "m=video 9 UDP/TLS/RTP/SAVPF 96 96\n", 5, "twice", id="m-pt-twice"),
    pytest.param(VIDEO + "a=rtpmap:98 VP8/90000\n", 7, "not on the m= line", id="rtpmap-pt"),
    pytest.param(VIDEO + "a=rtpmap:x VP8/90000\n", 7, "payload type", id="rtpmap-nonint"),
    pytest.param(VIDEO + "a=rtpmap:96 VP8\n", 7, "rtpmap needs", id="rtpmap-no-rate"),
    pytest.param(VIDEO + "a=rtpmap:96 VP8/fast\n", 7, "rtpmap needs", id="rtpmap-rate"),
    pytest.param(
        VIDEO + "a=rtpmap:96 VP8/90000\na=rtpmap:96 VP8/90000\n", 8, "second", id="rtpmap-dup"
    ),
    pytest.param(VIDEO + "a=fmtp:96\n", 7, "fmtp needs", id="fmtp-empty"),
    pytest.param(VIDEO + "a=fmtp:abc apt=96\n", 7, "payload type", id="fmtp-nonint"),
    pytest.param(VIDEO + "a=fmtp:97 apt=96\na=fmtp:97 apt=96\n", 8, "second", id="fmtp-dup"),
    pytest.param(VIDEO + "a=rtcp-fb:96\n", 7, "rtcp-fb needs", id="rtcp-fb"),
    pytest.param(VIDEO + "a=extmap:x urn:foo\n", 7, "extmap needs", id="extmap-id"),
    pytest.param(VIDEO + "a=extmap:1\n", 7, "extmap needs", id="extmap-uri"),
    pytest.param(VIDEO + "a=extmap:1/sideways urn:foo\n", 7, "extmap needs", id="extmap-dir"),
    pytest.param(VIDEO + "a=extmap:0 urn:foo\n", 7, "range", id="extmap-zero"),
    pytest.param(VIDEO + "a=extmap:1 urn:a\na=extmap:1 urn:b\n", 8, "id 1", id="extmap-dup"),
    pytest.param(VIDEO + "a=rid:q\n", 7, "rid needs", id="rid-no-direction"),
    pytest.param(VIDEO + "a=rid:q sideways\n", 7, "rid needs", id="rid-direction"),
    pytest.param(VIDEO + "a=rid:q! send\n", 7, "rid needs", id="rid-id"),
    pytest.param(VIDEO + "a=rid:q send\na=rid:q send\n", 8, "second a=rid", id="rid-dup"),
    pytest.param(VIDEO + "a=simulcast:send\n", 7, "simulcast", id="simulcast-empty"),
    pytest.param(VIDEO + "a=simulcast:up q;h\n", 7, "direction", id="simulcast-dir"),
    pytest.param(VIDEO + "a=simulcast:send q;;h\n", 7, "bad rid", id="simulcast-rid"),
    pytest.param(VIDEO + "a=ssrc:abc cname:x\n", 7, "ssrc", id="ssrc-nonint"),
    pytest.param(VIDEO + "a=ssrc:4294967296 cname:x\n", 7, "32 bits", id="ssrc-range"),
    pytest.param(VIDEO + "a=ssrc:1\n", 7, "ssrc needs", id="ssrc-no-attribute"),
    pytest.param(VIDEO + "a=ssrc-group:FID 1 x\n", 7, "ssrc", id="ssrc-group"),
    pytest.param(VIDEO + "a=ssrc-group:FID\n", 7, "ssrc-group needs", id="ssrc-group-empty"),
    pytest.param(VIDEO + "a=ssrc-group:\n", 7, "ssrc-group needs", id="ssrc-group-blank"),
    pytest.param(VIDEO + "a=fingerprint:sha-256\n", 7, "fingerprint", id="fingerprint"),
    pytest.param(VIDEO + "a=sctp-port:x\n", 7, "sctp-port", id="sctp-port"),
    pytest.param(VIDEO + "a=mid:1\n", 7, "second a=mid", id="mid-twice"),
    pytest.param(
        VIDEO + "m=audio 9 UDP/TLS/RTP/SAVPF 111\na=mid:0\n", 8, "duplicate mid", id="mid-dup"
    ),
    pytest.param(
        HEADER + "a=group:BUNDLE 0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\n",
        6,
        "without a=mid",
        id="bundle-no-mid",
    ),
    pytest.param(
        HEADER + "a=group:BUNDLE 0 1\nm=audio 9 UDP/TLS/RTP/SAVPF 111\na=mid:0\n",
        5,
        "unknown mid",
        id="bundle-unknown-mid",
    ),
    pytest.param(HEADER + "o=- 1 1 IN IP4 127.0.0.1\n", 5, "second o=", id="origin-twice"),
    # Hostile numbers: refused by length, before int() (whose cost grows with it).
    pytest.param(f"v=0\no=- {HUGE} 1 IN IP4 1.2.3.4\n", 2, "5000 digits", id="origin-huge"),
    pytest.param(f"v=0\no=- 1 {HUGE} IN IP4 1.2.3.4\n", 2, "session version", id="version-huge"),
    pytest.param(HEADER + f"m=video {HUGE} UDP/TLS/RTP/SAVPF 96\n", 5, "port", id="m-port-huge"),
    pytest.param(HEADER + "m=video 65536 UDP/TLS/RTP/SAVPF 96\n", 5, "range", id="m-port-range"),
    pytest.param(
        HEADER + f"m=video 9 UDP/TLS/RTP/SAVPF {HUGE}\n", 5, "payload type", id="m-pt-huge"
    ),
    pytest.param(VIDEO + f"a=rtpmap:96 VP8/{HUGE}\n", 7, "clock rate", id="rtpmap-rate-huge"),
    pytest.param(VIDEO + f"a=rtpmap:96 opus/48000/{HUGE}\n", 7, "channels", id="channels-huge"),
    pytest.param(VIDEO + f"a=extmap:{HUGE} urn:foo\n", 7, "extmap id", id="extmap-id-huge"),
    pytest.param(VIDEO + f"a=ssrc:{HUGE} cname:x\n", 7, "ssrc", id="ssrc-huge"),
    pytest.param(VIDEO + f"a=sctp-port:{HUGE}\n", 7, "sctp-port", id="sctp-port-huge"),
    pytest.param(HEADER + "a=group:\n", 5, "group needs", id="group-empty"),
    pytest.param(HEADER + "a=group: \n", 5, "group needs", id="group-blank"),
]


@pytest.mark.parametrize(("text", "line_number", "reason"), MALFORMED)
def test_malformed(text: str, line_number: int, reason: str):
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(text)
    assert info.value.line_number == line_number
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)
    assert f"line {line_number}" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        f"v=0\no=- {HUGE} 1 IN IP4 1.2.3.4\n",
        HEADER + f"a=group:BUNDLE {HUGE}\nm=audio 9 UDP/TLS/RTP/SAVPF 111\na=mid:0\n",
        HEADER + f"m=audio 9 UDP/TLS/RTP/SAVPF 111\na=mid:{HUGE}\n" * 2,
        VIDEO + f"a=simulcast:send {'q' * 5000}!\n",
        VIDEO + f"a=rid:{'q' * 5000} send\na=rid:{'q' * 5000} send\n",
    ],
)
def test_errors_quote_a_bounded_part_of_the_input(text: str):
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(text)
    assert len(str(info.value)) < 400
    assert "characters)" in str(info.value)


def test_group_without_mids_is_an_empty_group():
    desc = SessionDescription.parse(HEADER + "a=group:BUNDLE\n")
    assert desc.bundle_groups == [[]]
    assert create_publish_answer(desc, LOCAL) == (
        SessionDescription(session_id=1, session_version=1, ice_lite=True, msid_semantic="WMS"),
        [],
    )


def test_max_media():
    text = fixture_text(MAX_BUNDLE)
    assert len(SessionDescription.parse(text, max_media=3).media) == 3
    with pytest.raises(SdpError, match="more than 2 m= sections") as info:
        SessionDescription.parse(text, max_media=2)
    assert info.value.line.startswith("m=application")
    # The parse stops at the first section too many, however many follow.
    many = HEADER + "m=audio 9 UDP/TLS/RTP/SAVPF 111\n" * 2000
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(many, max_media=32)
    assert info.value.line_number == 5 + 32


def test_max_lines():
    lines = fixture_text(MAX_BUNDLE).splitlines()
    padding = [f"a=x-{n}" for n in range(MAX_LINES - len(lines) - 1)]
    assert SessionDescription.parse("\r\n".join([*lines, *padding]) + "\r\n")
    with pytest.raises(SdpError, match=f"more than {MAX_LINES} lines"):
        SessionDescription.parse("\r\n".join([*lines, *padding, "a=x"]) + "\r\n")


def test_publish_answer_bounds_declared_ssrcs():
    offer = load(MAX_BUNDLE)
    video = offer.media[1]
    video.ssrcs = {ssrc: {"cname": "x"} for ssrc in range(1, MAX_SSRCS_PER_SECTION + 1)}
    create_publish_answer(offer, LOCAL)
    video.ssrcs[99] = {"cname": "x"}
    with pytest.raises(SdpError, match=f"17 SSRCs; at most {MAX_SSRCS_PER_SECTION}"):
        create_publish_answer(offer, LOCAL)


def test_crlf_line_numbers():
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(VIDEO.replace("\n", "\r\n") + "a=rtpmap:1 x/1\r\n")
    assert info.value.line_number == 7
    assert info.value.line == "a=rtpmap:1 x/1"


# Random damage: only SdpError, whatever parses must round-trip, and the publish answer
# to it raises only SdpError too


def _mutations(lines: list[str]) -> st.SearchStrategy[list[tuple[str, int, int, str]]]:
    index = st.integers(min_value=0, max_value=len(lines) - 1)
    cut = st.integers(min_value=0, max_value=80)
    junk = st.text(max_size=12)
    mutation = st.tuples(
        st.sampled_from(["delete", "duplicate", "truncate", "swap", "huge", "insert"]),
        index,
        cut,
        junk,
    )
    return st.lists(mutation, min_size=1, max_size=6)


def _apply(lines: list[str], mutations: list[tuple[str, int, int, str]]) -> str:
    lines = list(lines)
    for op, i, cut, junk in mutations:
        i %= len(lines)
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "truncate":
            lines[i] = lines[i][:cut]
        elif op == "swap":  # an attribute moved to another place (and m-section)
            j = (i + cut) % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "huge":  # the first number on the line grows to 5,000 digits
            lines[i] = re.sub(r"[0-9]+", HUGE, lines[i], count=1)
        elif op == "insert":  # random characters inside a line
            lines[i] = lines[i][:cut] + junk + lines[i][cut:]
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize("name", ALL_FIXTURES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_raise_only_sdp_error(name: str, data: st.DataObject):
    lines = fixture_text(name).splitlines()
    text = _apply(lines, data.draw(_mutations(lines)))
    try:
        desc = SessionDescription.parse(text)
    except SdpError:
        return
    assert SessionDescription.parse(str(desc)) == desc
    try:
        answer, _ = create_publish_answer(desc, LOCAL, allow_h264=True)
        if answer.bundle_groups:
            bundle_transport(desc, answer)
    except SdpError:
        return
    assert SessionDescription.parse(str(answer)) == answer


def test_a_subscriber_is_offered_the_publishers_h264_profile():
    offer = load("chrome-plain-offer")
    video = offer.media[1]
    drop = {96, 97, 108, 109}  # VP8 and constrained baseline: baseline 42001f is left
    video.codecs = [c for c in video.codecs if c.payload_type not in drop]
    video.formats = [f for f in video.formats if int(f) not in drop]
    _, published = create_publish_answer(SessionDescription.parse(str(offer)), LOCAL, True)
    codec = published[1].codecs[0]
    assert codec.parameters["profile-level-id"] == "42001f"

    h264, h264_rtx = outgoing_codecs_for("video", codec, allow_h264=True)
    assert (h264.payload_type, h264.name) == (102, "H264")
    assert (h264_rtx.payload_type, h264_rtx.name, h264_rtx.apt) == (103, "rtx", 102)
    assert h264.parameters["profile-level-id"] == "42001f"
    assert h264.parameters["packetization-mode"] == "1"
    assert "x-google-start-bitrate" not in h264.parameters, "only stream parameters"
    assert outgoing_codecs_for("video", codec) == [], "no H.264 when it is not allowed"
    vp8, vp8_rtx = outgoing_codecs_for("video", Codec(120, "VP8", 90000))
    assert (vp8.payload_type, vp8.parameters) == (96, {})
    assert (vp8_rtx.payload_type, vp8_rtx.apt) == (97, 96), "NACKs are answered on RTX"
    (opus,) = outgoing_codecs_for("audio", Codec(111, "opus", 48000, 2))
    assert opus.payload_type == 111, "no rtx for audio"


def av1_first(desc: SessionDescription) -> SessionDescription:
    """What the demo page's ?codec=av1 offers: AV1 and its rtx only (setCodecPreferences)."""
    video = desc.media[1]
    keep = {45, 46}
    video.codecs = [c for c in video.codecs if c.payload_type in keep]
    video.formats = [f for f in video.formats if int(f) in keep]
    return SessionDescription.parse(str(desc))


def test_publish_answer_av1_when_the_publisher_chose_it():
    answer, published = create_publish_answer(av1_first(load("chrome-plain-offer")), LOCAL)
    av1, rtx = answer.media[1].codecs
    assert (av1.payload_type, av1.name, av1.parameters["profile"]) == (45, "AV1", "0")
    assert (rtx.payload_type, rtx.apt) == (46, 45)
    assert published[1].codecs[0].name == "AV1"
    # Offered after other codecs, AV1 is not what the publisher chose.
    answer, _ = create_publish_answer(without_vp8(load("chrome-plain-offer")), LOCAL)
    assert answer.media[1].port == 0


def test_the_dependency_descriptor_is_accepted_from_av1_publishers_only():
    offers = []
    for offer in (av1_first(load("chrome-plain-offer")), load("chrome-plain-offer")):
        offer.media[1].header_extensions.append(HeaderExtension(12, DEPENDENCY_DESCRIPTOR_URI))
        offers.append(SessionDescription.parse(str(offer)))
    answer, published = create_publish_answer(offers[0], LOCAL)
    assert HeaderExtension(12, DEPENDENCY_DESCRIPTOR_URI) in answer.media[1].header_extensions
    assert published[1].header_extensions[DEPENDENCY_DESCRIPTOR_URI] == 12
    answer, published = create_publish_answer(offers[1], LOCAL)
    assert published[1].codecs[0].name == "VP8"
    assert DEPENDENCY_DESCRIPTOR_URI not in published[1].header_extensions, (
        "VP8 packets are not made to carry what nothing reads"
    )


def test_a_subscriber_is_offered_av1_for_an_av1_track():
    _, published = create_publish_answer(av1_first(load("chrome-plain-offer")), LOCAL)
    av1, rtx = outgoing_codecs_for("video", published[1].codecs[0])
    assert (av1.payload_type, av1.name) == (45, "AV1")
    assert av1.parameters == {"level-idx": "5", "profile": "0", "tier": "0"}
    assert "nack pli" in av1.rtcp_feedback and "transport-cc" in av1.rtcp_feedback
    assert (rtx.payload_type, rtx.apt) == (46, 45)
    assert [c.name for c in outgoing_codecs_for("video", Codec(120, "VP8", 90000))] == [
        "VP8",
        "rtx",
    ], "AV1 is offered only for AV1 tracks"
