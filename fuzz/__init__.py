"""Coverage-guided fuzzing of the SFU's parsers with atheris (libFuzzer for Python).

Run one target from the repository root::

    python -m fuzz NAME [libFuzzer flags]        # e.g. python -m fuzz rtcp -runs=100000

``NAME`` is one of :data:`fuzz.targets.TARGETS` (rtp, rtcp, transport_cc, vp8, sdp). The
seed corpus is ``fuzz/corpus/NAME/`` (small real packets and offers, read only); the
inputs libFuzzer finds are written to a scratch directory (``-work DIR`` to keep them),
and a crash is written as ``crash-*`` to the current directory.
"""
