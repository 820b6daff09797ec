#!/usr/bin/env bash
# Install the SFU into ./.venv and start it on its embedded default: signaling and one
# media worker in one process, no Redis. Prints the demo URL. Debian 12, as root.
# It runs a development server (--dev: the published API secret, /api/dev-token for the
# demo page): to try the SFU out, never to expose it. See the README's Security section.
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
exec .venv/bin/sfu serve --dev "$@"
