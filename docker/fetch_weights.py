"""Save torchvision's ImageNet weights as `<dir>/<arch>.pth` state_dicts: the image's baked-in weights.

Run at build time (`--build-arg PRETRAINED_ARCHS=resnet50`, the default), where the internet is
reachable; training finds the files through IMGCLF_WEIGHTS_DIR and needs no download at run time.
Without the internet it stops and says how to build without weights.

    python fetch_weights.py /opt/weights resnet50,resnet18
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from torchvision.models import get_model_weights


def fetch(out: Path, archs: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for arch in archs:
        try:
            weights = get_model_weights(arch).DEFAULT
        except ValueError:
            raise SystemExit(f"torchvision has no ImageNet weights for {arch!r}; PRETRAINED_ARCHS takes "
                             "torchvision model names such as resnet50") from None
        try:
            state = weights.get_state_dict(progress=False)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            raise SystemExit(f"cannot download the ImageNet weights of {arch} from {weights.url} ({e}): on a "
                             "machine without the internet, build with --build-arg PRETRAINED_ARCHS= "
                             "(./build_and_push.sh --no-weights) to leave them out") from None
        torch.save(state, out / f"{arch}.pth")
        print(f"{arch}: {weights} saved to {out / f'{arch}.pth'}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    fetch(Path(sys.argv[1]), [a for arg in sys.argv[2:] for a in re.split(r"[,\s]+", arg) if a])
