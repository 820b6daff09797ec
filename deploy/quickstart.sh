#!/usr/bin/env bash
# Install the SFU into ./.venv and start it on its embedded default: signaling and one
# media worker in one process, no Redis. Prints the demo URL. Debian 12, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q .
exec .venv/bin/sfu serve "$@"
