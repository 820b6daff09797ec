"""Producer: whether the allocator has bitrate figures for a track yet."""

from sfu.producer import BITRATE_WINDOW, Producer
from sfu.sdp import Codec


def test_a_producer_is_measuring_until_its_first_bitrate_window_closes() -> None:
    producer = Producer(
        "TR_x", "PA_pub", "video", "0", [Codec(96, "VP8", 90000)], [], "camera", print
    )
    assert not producer.measuring(100.0), "nothing flows yet"
    stream = producer.add_stream(1234, None)
    stream.meter(1000, 100.0)
    stream.meter(1000, 100.5)
    assert producer.measuring(100.5)
    assert stream.available_bitrate(100.5) == 0
    stream.meter(1000, 100.0 + BITRATE_WINDOW)
    assert not producer.measuring(101.0)
    assert stream.available_bitrate(101.0) == stream.bitrate > 0
    assert not producer.measuring(110.0), "stopped: no longer measuring either"


def test_temporal_layer_bitrates_are_measured_cumulatively() -> None:
    producer = Producer(
        "TR_x", "PA_pub", "video", "0", [Codec(96, "VP8", 90000)], [], "camera", print
    )
    stream = producer.add_stream(1234, None)
    stream.meter(100, 100.0, tid=0)  # opens the first window
    for tid, size in ((0, 400), (2, 100), (1, 200), (2, 100)):
        stream.meter(size, 100.5, tid)
    stream.meter(0, 100.0 + BITRATE_WINDOW, tid=0)
    assert stream.temporal_bitrates == (400 * 8, 600 * 8, 800 * 8)
    assert stream.bitrate == 800 * 8
    stream.meter(500, 101.5)  # packets without a TID
    stream.meter(0, 102.0)
    assert stream.temporal_bitrates == ()
