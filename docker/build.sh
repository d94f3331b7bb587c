#!/usr/bin/env bash
# Builds the image from docker/Dockerfile with the repository as context:
#   docker/build.sh [--print] TAG [docker build option...]
# $BASE_IMAGE and $DOCKER_BUILD_ARGS are used when set (another base image, a package index), so
# the same command builds on a machine with a CUDA base at hand and on one with an offline mirror.
set -euo pipefail
# --print: show the command instead of running it.
root=$(cd "$(dirname "$0")/.." && pwd)
print=false
if [ "${1:-}" = --print ]; then print=true; shift; fi
tag=${1:?usage: docker/build.sh [--print] TAG [docker build option...]}
shift
# the host network lets the build reach a package index on 127.0.0.1
args=(--network host -t "$tag" -f "$root/docker/Dockerfile")
# $BASE_IMAGE is the base of either variant (the full one's BASE_IMAGE, the CPU one's CPU_BASE_IMAGE)
if [ -n "${BASE_IMAGE:-}" ]; then args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "CPU_BASE_IMAGE=$BASE_IMAGE"); fi
read -r -a extra <<<"${DOCKER_BUILD_ARGS:-}"
cmd=(docker build "${args[@]}" ${extra[@]+"${extra[@]}"} "$@" "$root")
printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'
$print || exec "${cmd[@]}"
