"""A user's own training script, as the SDK's PyTorch(entry_point=...) runs it: strict arguments,
the process group from torchrun's variables, the job's paths from sagemaker-training's SM_*.
--then fail raises; --then sigterm waits for SIGTERM (as a job stopped by SageMaker gets it)."""
import argparse
import os
import signal
import time

import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, required=True)
parser.add_argument("--then", choices=("end", "fail", "sigterm"), default="end")
args = parser.parse_args()  # strict: the image's own processes-per-host must not reach it
if args.then == "fail":
    raise ValueError("user script failed on purpose")
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
dist.init_process_group("gloo")
rank = dist.get_rank()
print(f"user script: rank {rank} of {dist.get_world_size()} epochs={args.epochs} "
      f"model_dir={os.environ['SM_MODEL_DIR']}", flush=True)
while args.then == "sigterm" and not stopped:
    time.sleep(0.1)
if stopped:
    print(f"user script: rank {rank} got SIGTERM", flush=True)
else:
    dist.destroy_process_group()
