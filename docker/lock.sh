#!/usr/bin/env bash
# Regenerates docker/requirements.lock from docker/requirements.txt (the full image) and
# docker/requirements-cpu.lock from docker/requirements-cpu.txt (VARIANT=cpu): every package the
# image installs, pinned, each with the SHA-256 hashes of its files on PyPI, so the build installs
# with `pip install --require-hashes` and nothing else. The CPU lock is resolved under the full
# lock's versions (a constraint), so both images serve with the same packages. Run it after
# changing a pin:
#
#   docker/lock.sh                      # both locks; needs PyPI, not Docker (its time: docs/benchmarks.md#lock)
#   docker/lock.sh cpu                  # the CPU lock only, from the full lock as it is
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
compile() {  # compile IN OUT [pip-compile option...]
  local in=$1 out=$2
  shift 2
  env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    "$work/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
    --index-url "${INDEX_URL:-https://pypi.org/simple}" --cache-dir "$work/cache" "$@" --output-file "$out" "$in"
  echo "wrote $out ($(grep -c '==' "$out") packages)"
}
if [ "${1:-}" != cpu ]; then compile docker/requirements.txt docker/requirements.lock; fi
# the full lock's pins, without hashes, constrain the CPU lock
grep -o '^[A-Za-z0-9._-]*==[^ ]*' docker/requirements.lock >"$work/full-pins.txt"
compile docker/requirements-cpu.txt docker/requirements-cpu.lock --constraint "$work/full-pins.txt"
sed -i "s|$work/full-pins.txt|docker/requirements.lock|g" docker/requirements-cpu.lock
