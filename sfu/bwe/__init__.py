"""Bandwidth estimation, sans-I/O: callers pass packets, feedback and ``now`` (seconds).

* :class:`TransportCcFeedbackGenerator`: the SFU as a receiver of a publisher's media
  writes transport-cc feedback, which the publisher's congestion controller (and so its
  simulcast encoder) relies on to ramp up.
* :class:`SendSideBandwidthEstimator`: the SFU as a sender to one subscriber estimates
  the available bitrate from that subscriber's transport-cc feedback, REMB and receiver
  reports, and decides when to probe with padding.
"""

from sfu.bwe.feedback_generator import TransportCcFeedbackGenerator
from sfu.bwe.send_side import RateControlState, SendSideBandwidthEstimator

__all__ = ["RateControlState", "SendSideBandwidthEstimator", "TransportCcFeedbackGenerator"]
