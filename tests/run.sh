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
# Tests that run OpenVINO get a pytest process of their own: after OpenVINO inference, a later,
# unrelated test in the same process has crashed in Python's memory management (OpenVINO's and
# torch's native code in one process), and one crash would end the whole run. Exit 5 (nothing
# selected) counts only when neither run selected anything.
codes=()
for marker in "not openvino" openvino; do
  code=0
  "$VENV/bin/python" -m pytest -m "$marker" "$@" || code=$?
  codes+=("$code")
done
for code in "${codes[@]}"; do
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then exit "$code"; fi
done
[ "${codes[0]}" -eq 5 ] && [ "${codes[1]}" -eq 5 ] && exit 5
exit 0
