"""The forwarding benchmark (``python -m sfu.bench``): server CPU per forwarded packet.

:mod:`sfu.bench.media` pre-encodes and caches the VP8 clip, :mod:`sfu.bench.participants`
holds the lean publishers and subscribers, :mod:`sfu.bench.loadgen` runs them in
load-generator processes and :mod:`sfu.bench.runner` orchestrates and measures.
"""
