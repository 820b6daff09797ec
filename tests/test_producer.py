"""Producer streams: what the allocator is told about a layer's bitrate."""

from sfu.producer import BITRATE_WINDOW, RtpStream
from sfu.rtp.receive_statistics import ReceiveStatistics


def stream() -> RtpStream:
    return RtpStream(ssrc=1, rid=None, layer=0, statistics=ReceiveStatistics(1, 90000))


def test_a_stream_in_its_first_window_is_available_with_what_it_measured_so_far() -> None:
    layer = stream()
    assert layer.available_bitrate(100.0) == 0  # nothing received yet
    layer.meter(1000, 100.0)  # the first packet opens the first window
    assert layer.available_bitrate(100.0) == 1
    layer.meter(1000, 100.25)
    assert layer.available_bitrate(100.5) == 1000 * 8 / 0.5
    layer.meter(1000, 100.0 + BITRATE_WINDOW)
    assert layer.available_bitrate(101.0) == layer.bitrate == 2000 * 8
    assert layer.available_bitrate(104.0) == 0  # stopped flowing


def test_a_paused_stream_keeps_its_last_bitrate() -> None:
    layer = stream()
    layer.meter(1000, 100.0)
    layer.meter(1000, 101.0)
    layer.paused = True
    assert layer.available_bitrate(110.0) == layer.bitrate > 0
