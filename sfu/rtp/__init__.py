"""Sans-I/O RTP and RTCP packet layer: parsing, building and in-place rewriting.

Nothing here performs I/O or reads a clock; callers pass bytes and times in.
"""
