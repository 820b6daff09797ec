"""The forwarding benchmark: clip cache round trip, SDP shapes, short real runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiortc.rtcdtlstransport import RTCCertificate

from sfu.bench import runner
from sfu.bench.loadgen import SubscriberCounters
from sfu.bench.media import (
    VP9_SVC_CAPTURE,
    Clip,
    ClipPacket,
    Replay,
    Vp9Capture,
    load_vp9_capture,
    read_packets,
    synthetic_audio,
    write_packets,
)
from sfu.bench.participants import BenchPublisher, create_recvonly_answer
from sfu.bench.syscall_count import SyscallCountError, SyscallCounts, read_counts
from sfu.rtp.extensions import TRANSPORT_WIDE_CC
from sfu.rtp.vp9 import Vp9Descriptor
from sfu.sdp import (
    HeaderExtension,
    LocalTransport,
    OutgoingMedia,
    SessionDescription,
    create_publish_answer,
    create_subscribe_offer,
    default_outgoing_codecs,
    parse_subscribe_answer,
)


def _packets() -> list[ClipPacket]:
    return [
        ClipPacket(b"key-1", False, 3000, True),
        ClipPacket(b"key-2", True, 0, False),
        ClipPacket(b"delta", True, 3000, False),
        ClipPacket(b"key-b", True, 3000, True),
        ClipPacket(b"delta", True, 3000, False),
    ]


def test_clip_cache_round_trip(tmp_path):
    path = tmp_path / "clip.bin"
    write_packets(path, _packets())
    assert read_packets(path) == _packets()
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError):
        read_packets(path)


def test_replay_loops_and_skips_to_key_frames():
    clip = Clip.from_packets(_packets(), 90000)
    assert [len(f.payloads) for f in clip.frames] == [2, 1, 1, 1]
    assert clip.duration == pytest.approx(4 * 3000 / 90000)
    replay = Replay(clip)
    assert replay.next_frame().key_frame
    assert replay.skip_to_key_frame()
    assert replay.next_frame().payloads == (b"key-b",)
    replay.next_frame()
    assert not replay.skip_to_key_frame()  # the loop's first frame is a key frame
    assert replay.next_frame().key_frame


def test_synthetic_audio_rate():
    audio = synthetic_audio()
    assert audio.packets_per_second == pytest.approx(50)
    assert 90 <= audio.bits_per_second / 8 / 50 <= 110


def test_the_vp9_svc_capture_loops_whole_pictures_key_picture_first(tmp_path):
    clip = load_vp9_capture(Vp9Capture(str(VP9_SVC_CAPTURE)))
    rows = [json.loads(line) for line in VP9_SVC_CAPTURE.read_text().splitlines()]
    assert (clip.codec, clip.spatial_layers, clip.packet_count) == ("VP9", 2, len(rows))
    assert len(clip.frames) == len({row["ts"] for row in rows}) == 99
    assert clip.frames[0].key_frame
    assert [len(p) for f in clip.frames for p in f.payloads] == [row["size"] for row in rows]
    descriptors = [Vp9Descriptor.parse(p) for f in clip.frames for p in f.payloads]
    assert {d.sid for d in descriptors} == {0, 1} and {d.tid for d in descriptors} == {0, 1, 2}
    # The loop's seam: the first picture follows the last one by the mean interval.
    span = (rows[-1]["ts"] - rows[0]["ts"]) / 90000
    assert clip.duration == pytest.approx(span * 99 / 98, abs=1e-4)
    assert 4.5 < clip.duration < 5.5 and 55 < clip.packets_per_second < 70
    gap = tmp_path / "gap.jsonl"
    gap.write_text("\n".join(json.dumps(row) for row in rows[:5] + rows[6:]))
    with pytest.raises(ValueError, match="sequence gap"):
        load_vp9_capture(Vp9Capture(str(gap)))
    deltas = tmp_path / "deltas.jsonl"
    deltas.write_text("\n".join(json.dumps(row) for row in rows[3:40]))
    assert load_vp9_capture(Vp9Capture(str(deltas))).frames[0].key_frame  # skipped to one
    deltas.write_text("\n".join(json.dumps(row) for row in rows[40:60]))
    with pytest.raises(ValueError, match="no key picture"):
        load_vp9_capture(Vp9Capture(str(deltas)))


def test_a_vp9_publisher_offers_vp9_alone_and_the_server_takes_it():
    clip = load_vp9_capture(Vp9Capture(str(VP9_SVC_CAPTURE)))
    publisher = BenchPublisher("ws://unused", "token", RTCCertificate.generateCertificate(), [clip])
    offer = SessionDescription.parse(str(publisher._offer(_local("bench"))))
    assert [c.name for c in offer.media[0].codecs] == ["VP9"]
    _, published = create_publish_answer(offer, _local("server"))
    assert published[0].codecs[0].name == "VP9"
    assert published[0].codecs[0].payload_type == publisher.video[0].payload_type


def _local(ufrag: str) -> LocalTransport:
    return LocalTransport(
        ice_ufrag=ufrag,
        ice_pwd="p" * 24,
        fingerprints=[("sha-256", "AB:" * 31 + "AB")],
        candidates=["1 1 udp 2130706431 127.0.0.1 40000 typ host"],
    )


def test_recvonly_answer_fits_the_servers_offer():
    media = [
        OutgoingMedia(
            mid=str(i),
            kind=kind,
            codecs=default_outgoing_codecs(kind),
            header_extensions=[HeaderExtension(id=3, uri=TRANSPORT_WIDE_CC)],
            ssrc=1000 + i,
            rtx_ssrc=None,
            cname="c",
            stream_id="s",
            track_id=f"t{i}",
            active=i != 1,
        )
        for i, kind in enumerate(["video", "video", "audio"])
    ]
    offer = create_subscribe_offer(_local("server"), media, 7, 3)
    answer = create_recvonly_answer(SessionDescription.parse(str(offer)), _local("bench"), 3)
    parsed = SessionDescription.parse(str(answer))
    negotiated = parse_subscribe_answer(parsed, offer)
    assert [m.direction for m in negotiated.values()] == ["recvonly", "inactive", "recvonly"]
    assert [m.codecs[0].name for m in negotiated.values()] == ["VP8", "VP8", "opus"]
    assert parsed.transport(parsed.media[0]).setup == "active"
    assert all(TRANSPORT_WIDE_CC not in m.header_extension_ids() for m in parsed.media)
    with_feedback = create_recvonly_answer(
        SessionDescription.parse(str(offer)), _local("bench"), 3, transport_cc=True
    )
    assert TRANSPORT_WIDE_CC in with_feedback.media[0].header_extension_ids()
    assert [c.name for c in with_feedback.media[0].codecs] == ["VP8", "rtx"]
    assert [c.name for c in answer.media[0].codecs] == ["VP8"]


def test_simulcast_publisher_offers_three_rids_like_chrome():
    clip = Clip.from_packets(_packets(), 90000)
    publisher = BenchPublisher(
        "ws://unused", "token", RTCCertificate.generateCertificate(), [clip] * 3, synthetic_audio()
    )
    offer = SessionDescription.parse(str(publisher._offer(_local("bench"))))
    video, audio = offer.media
    assert [(rid.id, rid.direction) for rid in video.rids] == [
        ("q", "send"),
        ("h", "send"),
        ("f", "send"),
    ]
    assert video.simulcast is not None and video.simulcast.send == [["q"], ["h"], ["f"]]
    assert not video.ssrcs
    assert audio.ssrcs and not audio.rids
    _, published = create_publish_answer(offer, _local("server"))
    assert published[0].rids == ["q", "h", "f"]
    assert len({layer.ssrc for layer in publisher.video}) == 3


def test_layer_mix_averages_by_cap():
    start = [SubscriberCounters(0, 10, 1000), SubscriberCounters(0, 20, 2000)]
    start.append(SubscriberCounters(2, 0, 0))
    end = [SubscriberCounters(0, 30, 3000), SubscriberCounters(0, 60, 6000)]
    end.append(SubscriberCounters(2, 100, 250_000))
    mix = runner.layer_mix(start, end, 2.0)
    assert [(m.max_spatial_layer, m.subscribers) for m in mix] == [(0, 2), (2, 1)]
    assert mix[0].packets_per_second == pytest.approx(15)
    assert mix[1].megabits_per_second == pytest.approx(1.0)
    assert (
        runner.layer_mix([SubscriberCounters(None, 0, 0)], [SubscriberCounters(None, 5, 5)], 1)
        == []
    )


def test_scenario_parse():
    assert runner.Scenario.parse("4x4") == runner.Scenario(4, 4)
    with pytest.raises(Exception, match="PUBLISHERSxSUBSCRIBERS"):
        runner.Scenario.parse("4by4")


def test_short_run_against_a_spawned_server(capsys):
    status = runner.main(["--scenario", "1x2", "--duration", "3", "--warmup", "1"])
    out = capsys.readouterr().out
    assert status == 0, out
    header, rule, row, command = out.strip().splitlines()
    assert set(rule) == {"-", " "}
    assert header.split() == [
        "publishers",
        "subscribers",
        "mode",
        "packets",
        "in/s",
        "packets",
        "out/s",
        "server",
        "CPU",
        "%",
        "wake-ups/s",
        "sockets",
        "syscalls/packet",
        "µs/packet",
        "µs/packet",
        "in",
        "loss",
        "%",
    ]
    (publishers, subscribers, mode, pps_in, pps_out, cpu, wakeups, sockets, syscalls) = row.split()[
        :9
    ]
    us_per_packet, us_per_packet_in, loss = row.split()[9:]
    assert (sockets, syscalls) == ("1", "n/a")  # one UDP port; syscalls not counted
    assert float(cpu) > 0
    assert float(wakeups) > 20  # at least one per video frame, 30 per second
    assert (publishers, subscribers, mode) == ("1", "2", "plain")
    assert float(pps_in) > 100
    assert float(pps_out) > 0
    assert float(us_per_packet_in) > float(us_per_packet) > 0  # 2 out for every packet in
    assert float(loss) < 5
    assert command == "command: python -m sfu.bench --scenario 1x2 --duration 3 --warmup 1"


def short_json_run(
    capsys: pytest.CaptureFixture[str], *args: str, duration: str = "3"
) -> dict[str, Any]:
    """A short run (3 s) of one scenario against a spawned server, its ``--json`` output."""
    status = runner.main([*args, "--duration", duration, "--warmup", "1", "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    return json.loads(out)


def test_short_simulcast_run_spreads_subscribers_over_the_layers(capsys):
    output = short_json_run(capsys, "--simulcast", "--scenario", "1x3")
    (result,) = output["results"]
    assert result["mode"] == "simulcast"
    assert [clip["width"] for clip in output["clips"]] == [160, 320, 640]
    mix = result["layer_mix"]
    assert [(m["max_spatial_layer"], m["subscribers"]) for m in mix] == [(0, 1), (1, 1), (2, 1)]
    assert all(m["packets_per_second"] > 10 for m in mix)
    assert mix[0]["megabits_per_second"] < mix[2]["megabits_per_second"] / 2
    assert result["packets_in_per_second"] > 200  # the three layers together
    assert result["loss_percent"] < 5


def test_short_vp9_svc_run_forwards_each_subscriber_its_spatial_layer(capsys):
    """One VP9 SVC stream: the subscriber capped at spatial layer 0 gets only its
    packets (about a third), the one at layer 1 all of them; no sequence gaps."""
    output = short_json_run(capsys, "--vp9-svc", "--scenario", "1x2")
    (clip,) = output["clips"]
    assert (clip["codec"], clip["spatial_layers"]) == ("VP9", 2)
    (result,) = output["results"]
    assert result["mode"] == "vp9-svc"
    low, high = result["layer_mix"]
    assert (low["max_spatial_layer"], high["max_spatial_layer"]) == (0, 1)
    assert high["packets_per_second"] == pytest.approx(result["packets_in_per_second"], rel=0.1)
    assert 5 < low["packets_per_second"] < 0.6 * high["packets_per_second"]
    assert low["megabits_per_second"] < 0.5 * high["megabits_per_second"]
    assert result["loss_percent"] == 0
    assert result["server_cpu_us_per_received_packet"] > result["server_cpu_us_per_packet"]


def test_short_run_with_transport_cc_feedback(capsys):
    (result,) = short_json_run(capsys, "--transport-cc", "--scenario", "1x2")["results"]
    assert result["packets_out_per_second"] > 100
    assert result["loss_percent"] < 5


def test_short_run_with_a_peer_connection_per_stream_and_a_socket_per_transport(capsys):
    """2x1 with a PeerConnection per subscriber stream: two WHEP viewers, one per
    publisher, each on a UDP socket of its own; the server's syscalls counted."""
    output = short_json_run(
        capsys,
        "--pc-per-stream",
        "--socket-per-transport",
        "--count-syscalls",
        "--scenario",
        "2x1",
        duration="2",
    )
    (result,) = output["results"]
    assert result["mode"] == "pc-per-stream"
    # Both publishers reach the subscriber, each over its own viewer's transport.
    assert result["packets_out_per_second"] > 0.9 * result["packets_in_per_second"] > 400
    assert 90 < result["delivered_percent"] < 110
    assert 0 <= result["server_runqueue_wait_percent"] < 100
    assert result["loss_percent"] < 5
    assert result["server_udp_sockets"] >= 4  # 2 publishers + 2 viewers, a socket each
    by_name = result["server_syscalls_per_packet_by_name"]
    # One recvmsg per received datagram: about one per forwarded packet at 2x1.
    assert 0.8 < by_name["recvmsg"] < 2
    assert result["server_syscalls_per_packet"] > by_name["recvmsg"] + by_name["sendmmsg"]


PERF_OUTPUT = """# started on Fri Dec  4 19:51:39 2026

     0.100490820,7164,,raw_syscalls:sys_enter,79589521,100.00,,
     0.100490820,80,,syscalls:sys_enter_recvmsg,79608690,100.00,,
     0.200891626,2331,,raw_syscalls:sys_enter,49576008,100.00,,
     0.200891626,<not counted>,,syscalls:sys_enter_recvmsg,0,100.00,,
     0.301202256,734,,raw_syscalls:sys_enter,6156483,100.00,,
     0.301202256,36"""


def test_syscall_counts_sum_whole_intervals(tmp_path):
    path = tmp_path / "perf.csv"
    path.write_text(PERF_OUTPUT)
    # The last interval may still be being written: left out.
    counts = read_counts(path)
    assert counts == SyscallCounts(0.200891626, 7164 + 2331, {"recvmsg": 80})
    path.write_text(PERF_OUTPUT + "\nnot,a perf line\n")
    with pytest.raises(SyscallCountError):
        read_counts(path)


def test_json_output(capsys, monkeypatch):
    result = runner.ScenarioResult(
        publishers=1,
        subscribers=2,
        mode="plain",
        duration=3.0,
        packets_in_per_second=300,
        packets_out_per_second=600,
        megabits_in_per_second=3,
        megabits_out_per_second=6,
        server_cpu_percent=None,
        server_wakeups_per_second=None,
        server_cpu_us_per_packet=None,
        server_cpu_us_per_received_packet=None,
        server_system_us_per_packet=None,
        server_runqueue_wait_percent=None,
        delivered_percent=None,
        server_udp_sockets=None,
        server_syscalls_per_packet=None,
        server_syscalls_per_packet_by_name={},
        loss_percent=0,
        load_generator_cpu_percent=10,
        key_frame_requests=1,
        layer_mix=[],
    )
    monkeypatch.setattr(runner, "run_scenario", lambda *args: result)
    status = runner.main(["--server", "http://127.0.0.1:1", "--json", "--duration", "1"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"][0]["packets_out_per_second"] == 600
    assert report["command"].endswith("--json --duration 1")
    assert "n/a" in runner.format_table([result])
