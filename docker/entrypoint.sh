#!/bin/sh
# SageMaker starts the image as `docker run IMAGE train` (training and tuning jobs) and as
# `docker run IMAGE serve` (endpoints, batch transform). exec, so that the job itself is PID 1
# and receives SIGTERM: training checkpoints on a spot interruption, the server stops cleanly.
# Anything else runs as a command (`docker run IMAGE python -c ...`).
set -e
case "${1:-}" in
  train) shift; exec imgclf-train "$@" ;;
  serve) shift; exec imgclf-serve "$@" ;;
  "") echo "usage: docker run IMAGE train|serve|COMMAND [ARG...]" >&2; exit 64 ;;
  *) exec "$@" ;;
esac
