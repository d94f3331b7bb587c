#!/usr/bin/env bash
# Regenerates docker/requirements.lock from docker/requirements.txt: every package the image
# installs, pinned, each with the SHA-256 hashes of its files on PyPI, so the build installs with
# `pip install --require-hashes` and nothing else. Run it after changing a pin:
#
#   docker/lock.sh                      # needs PyPI, not Docker (its time: README, Security)
#   INDEX_URL=https://mirror.example/simple docker/lock.sh
#
# It resolves for Linux x86_64 with this machine's python3 (use the image's version: 3.11 on
# Debian 12; 3.12 resolves to the same set today), in a throwaway venv with pip-tools, ignoring
# this machine's pip configuration so that the lock does not depend on it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q pip-tools==7.6.2
cd "$root"
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  "$work/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
  --index-url "${INDEX_URL:-https://pypi.org/simple}" --cache-dir "$work/cache" \
  --output-file docker/requirements.lock docker/requirements.txt
echo "wrote docker/requirements.lock ($(grep -c '==' docker/requirements.lock) packages)"
