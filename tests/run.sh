#!/usr/bin/env bash
# Install everything the test suite needs on a Debian 12 machine (as root), then run it.
# Idempotent: packages already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v chromium >/dev/null || apt_packages+=(chromium)
command -v redis-server >/dev/null || apt_packages+=(redis-server)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || apt_packages+=(haproxy)
command -v espeak-ng >/dev/null || apt_packages+=(espeak-ng)  # voice agent TTS
command -v prometheus >/dev/null || apt_packages+=(prometheus)  # tests/test_dashboards.py
command -v turnserver >/dev/null || apt_packages+=(coturn)  # tests/test_turn.py
command -v docker-compose >/dev/null || apt_packages+=(docker-compose)  # tests/test_deploy.py
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
