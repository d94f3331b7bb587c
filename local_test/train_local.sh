#!/usr/bin/env bash
# Runs a training job on test_dir (the /opt/ml tree of a small job) as SageMaker would:
#   ./train_local.sh [IMAGE]         (default imgclf:latest)
# The model lands in test_dir/model, logs' metrics in test_dir/output/data, and on failure the
# reason in test_dir/output/failure.
set -euo pipefail
cd "$(dirname "$0")"
. ./checks.sh
image=${1:-imgclf:latest}
need_image "$image"
# Earlier outputs are root's (the container runs as root): clear them from inside a container.
docker run --rm -v "$PWD/test_dir:/opt/ml" "$image" rm -rf /opt/ml/model /opt/ml/output /opt/ml/checkpoints
docker run --rm -v "$PWD/test_dir:/opt/ml" "$image" train
