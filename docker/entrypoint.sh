#!/bin/sh
# SageMaker starts the image as `docker run IMAGE train` (training and tuning jobs) and as
# `docker run IMAGE serve` (endpoints, batch transform). `train` is sagemaker-training's trainer,
# as in AWS's PyTorch containers: it runs imgclf.train.toolkit (SAGEMAKER_TRAINING_MODULE), which starts
# the estimator's entry point or imgclf-train, with torchrun when there are several processes; the
# job comes from /opt/ml, not from arguments. exec, so that the job itself is PID 1 and receives
# SIGTERM: training checkpoints on a spot interruption, the server stops cleanly.
# Anything else runs as a command (`docker run IMAGE python -c ...`).
set -e
case "${1:-}" in
  train)
    if [ "${IMGCLF_IMAGE_VARIANT:-full}" = cpu ]; then
      # the CPU image serves without torch: tell the job, and SageMaker through the failure file
      reason="this is the CPU serving image (built with VARIANT=cpu: no torch, no CUDA); it serves models but cannot train them. Train with the full image (docker build without --build-arg VARIANT=cpu; ./build_and_push.sh without --cpu)"
      echo "imgclf: $reason" >&2
      if mkdir -p /opt/ml/output 2>/dev/null; then printf '%s\n' "$reason" >/opt/ml/output/failure || true; fi
      exit 2
    fi
    shift; exec train "$@" ;;
  serve) shift; exec imgclf-serve "$@" ;;
  "") echo "usage: docker run IMAGE train|serve|COMMAND [ARG...]" >&2; exit 64 ;;
  *) exec "$@" ;;
esac
