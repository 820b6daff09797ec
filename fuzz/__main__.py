"""``python -m fuzz NAME [-work DIR] [libFuzzer flags]``: see :mod:`fuzz`."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

CORPUS = Path(__file__).resolve().parent / "corpus"


def main(argv: list[str]) -> None:
    names = sorted(path.name for path in CORPUS.iterdir() if path.is_dir())
    if len(argv) < 2 or argv[1] not in names:
        sys.exit(f"usage: python -m fuzz {{{','.join(names)}}} [-work DIR] [libFuzzer flags]")
    name, flags = argv[1], argv[2:]
    work = None
    if "-work" in flags:
        index = flags.index("-work")
        work = Path(flags[index + 1])
        del flags[index : index + 2]
        work.mkdir(parents=True, exist_ok=True)
    with atheris.instrument_imports(include=["sfu"]):
        from fuzz.targets import TARGETS
    target = TARGETS[name]
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch:
        # libFuzzer writes new inputs into the first corpus directory: never the seeds.
        corpora = [str(work or scratch), str(CORPUS / name)]
        atheris.Setup([argv[0], *flags, *corpora], target)
        atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
