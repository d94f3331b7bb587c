#!/usr/bin/env bash
# Posts an image to the local endpoint and prints the answer:
#   ./predict.sh [IMAGE_FILE] [CONTENT_TYPE]
# Default: the first test image of the sample; the content type follows the file's extension.
set -euo pipefail
start=$PWD
cd "$(dirname "$0")"
. ./checks.sh
payload=${1:-$(find test_dir/input/data/test -name '*.jpg' | sort | head -n1)}
if [ -n "${1:-}" ] && [[ $payload != /* ]]; then payload=$start/$payload; fi  # relative to where it was called
[ -f "$payload" ] || die "no file ${1:-in test_dir/input/data/test}: give an image file"
curl -fsS -o /dev/null "http://127.0.0.1:${PORT:-8080}/ping" 2>/dev/null \
  || die "no server answers on 127.0.0.1:${PORT:-8080}: start one with ./serve_local.sh (or set PORT)"
case "$payload" in
  *.png | *.PNG) default_type=image/png ;;
  *.json) default_type=application/json ;;
  *.npy) default_type=application/x-npy ;;
  *) default_type=image/jpeg ;;
esac
curl -sS --fail-with-body --data-binary "@$payload" -H "Content-Type: ${2:-$default_type}" \
  -H "Accept: application/json" "http://127.0.0.1:${PORT:-8080}/invocations"
echo
