#!/usr/bin/env bash
# The test command: creates .venv on first use, installs the package with its test extras, runs pytest.
#   ./tests/run.sh            all tests (Docker, MMS and SDK local-mode tests skip where missing)
#   ./tests/run.sh -k serve   pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# torch pinned to the release whose torchvision build matches (CUDA wheels; they run on CPU too)
"$VENV/bin/pip" install -q -e '.[test]' torch==2.14.1 torchvision==0.29.1
exec "$VENV/bin/python" -m pytest "$@"
