"""The fuzz targets (fuzz/targets.py) over their seed corpus, and every prefix of it.

Coverage-guided runs need atheris (``python -m fuzz NAME``); this only keeps the
targets and the corpus working in the suite, fast: a target that raises anything but
a documented ``ValueError`` or fails a round-trip assertion on a seed fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"


def test_every_target_has_a_seed_corpus():
    assert sorted(TARGETS) == sorted(path.name for path in CORPUS.iterdir())
    for name in TARGETS:
        assert list((CORPUS / name).iterdir()), f"no seeds for {name}"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_over_its_corpus(name):
    target = TARGETS[name]
    for seed in sorted((CORPUS / name).iterdir()):
        data = seed.read_bytes()
        target(data)
        if name != "sdp":  # each truncated SDP line is a new offer: the seeds suffice
            for end in range(len(data)):
                target(data[:end])
