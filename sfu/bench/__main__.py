"""``python -m sfu.bench``: run the forwarding benchmark."""

from sfu.bench.runner import main

if __name__ == "__main__":  # load-generator processes re-import this module
    raise SystemExit(main())
