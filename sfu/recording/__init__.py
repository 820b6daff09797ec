"""Track recording without transcoding: RTP depacketized into frames, muxed by PyAV.

- :mod:`.jitter_buffer`: one RTP stream's packets put back in sequence order and cut
  into frames; a frame with a packet that never came is reported lost.
- :mod:`.vp8`, :mod:`.h264`, :mod:`.opus`: the payload formats (RFC 7741, RFC 6184,
  RFC 7587): a frame's payloads into one codec frame, key frames, picture sizes.
- :mod:`.clock`: RTP timestamps onto one clock for every track of a participant
  (sender reports when there are some, arrival times otherwise).
- :mod:`.muxer`: the PyAV container, written in a thread of its own behind a bounded
  queue, so the event loop never waits for the disk.
- :mod:`.recorder`: one track into one file: the layer recorded, key-frame starts,
  losses, layer switches and new SSRCs.
- :mod:`.manager`: the recordings of a worker: the room API's start and stop, limits,
  publisher reconnects (segments) and the ``recording_finished`` event.
"""
