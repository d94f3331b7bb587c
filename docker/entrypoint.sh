#!/bin/sh
# SageMaker starts the image as `docker run IMAGE train` (training and tuning jobs) and as
# `docker run IMAGE serve` (endpoints, batch transform). `train` is sagemaker-training's trainer,
# as in AWS's PyTorch containers: it runs imgclf.toolkit (SAGEMAKER_TRAINING_MODULE), which starts
# the estimator's entry point or imgclf-train, with torchrun when there are several processes; the
# job comes from /opt/ml, not from arguments. exec, so that the job itself is PID 1 and receives
# SIGTERM: training checkpoints on a spot interruption, the server stops cleanly.
# Anything else runs as a command (`docker run IMAGE python -c ...`).
set -e
case "${1:-}" in
  train) shift; exec train "$@" ;;
  serve) shift; exec imgclf-serve "$@" ;;
  "") echo "usage: docker run IMAGE train|serve|COMMAND [ARG...]" >&2; exit 64 ;;
  *) exec "$@" ;;
esac
