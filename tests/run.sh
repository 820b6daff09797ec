#!/usr/bin/env bash
# Install everything the test suite needs on a Debian 12 machine (as root), then run it.
# Idempotent: packages already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v chromium >/dev/null || apt_packages+=(chromium)
command -v firefox-esr >/dev/null || apt_packages+=(firefox-esr)  # tests/test_firefox_browser.py
command -v redis-server >/dev/null || apt_packages+=(redis-server)
command -v redis-sentinel >/dev/null || apt_packages+=(redis-sentinel)  # tests/test_sentinel.py
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || apt_packages+=(haproxy)
command -v espeak-ng >/dev/null || apt_packages+=(espeak-ng)  # voice agent TTS
command -v prometheus >/dev/null || apt_packages+=(prometheus)  # tests/test_dashboards.py
command -v turnserver >/dev/null || apt_packages+=(coturn)  # tests/test_turn.py
command -v ffprobe >/dev/null || apt_packages+=(ffmpeg)  # tests/test_recording*.py: ffprobe, ffmpeg
command -v perf >/dev/null || apt_packages+=(linux-perf)  # tests/test_bench.py: python -m sfu.bench --count-syscalls
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || apt_packages+=(nftables)  # tests/test_lossy_link.py, tests/test_single_port_browser.py
command -v node >/dev/null || apt_packages+=(nodejs)  # tests/test_sdk_js.py: the npm package in Node
command -v docker-compose >/dev/null || apt_packages+=(docker-compose)  # tests/test_deploy.py
# tests/test_whip.py: Debian's GStreamer WHIP client, libnice, the VP8/Opus encoders,
# and gcc for the no-op libgupnp-igd the test builds (see IGD_STUB there).
command -v whip-client >/dev/null || apt_packages+=(simple-whip-client gstreamer1.0-nice
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)
command -v gcc >/dev/null || apt_packages+=(gcc libc6-dev)
python3 -c "import venv, ensurepip" 2>/dev/null || apt_packages+=(python3-venv)
if [ ${#apt_packages[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test]"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q "$@"
