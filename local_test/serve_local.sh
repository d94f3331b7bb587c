#!/usr/bin/env bash
# Serves test_dir/model on 127.0.0.1:${PORT:-8080} as a SageMaker endpoint would (Ctrl-C stops it):
#   ./serve_local.sh [IMAGE] [docker run option...]       (default imgclf:latest; the CPU image serves too)
set -euo pipefail
cd "$(dirname "$0")"
. ./checks.sh
image=${1:-imgclf:latest}
shift || true
need_image "$image"
[ -f test_dir/model/model.json ] || die "no model in test_dir/model: train one first with ./train_local.sh"
exec docker run --rm -p "127.0.0.1:${PORT:-8080}:8080" -v "$PWD/test_dir:/opt/ml" "$@" "$image" serve
