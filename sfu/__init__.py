"""A WebRTC selective forwarding unit: rooms, producers, consumers, RTP forwarding."""

__version__ = "0.1.0"
