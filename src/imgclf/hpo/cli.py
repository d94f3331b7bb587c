"""`imgclf-tune`: the local tuner (Optuna's TPE) on the command line, trials in turn on this machine.

    imgclf-tune --data ./data --output ./tuning --trials 8 --epochs 3 --arch efficientnet_lite0
    imgclf-tune --data ./data --output ./worker-1 --storage sqlite:///tuning.db --trials 8   (one per worker)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import optuna

from ..commandline import ArgumentParser, user_errors
from ..names import DEFAULT_PRUNER, LOG_FORMAT, PRUNERS
from ..tracking.search import search_runs
from ..train import hyperparameters
from ..train.layout import SPLIT_CHANNELS, check_layout
from . import FINAL_EPOCHS, OBJECTIVE_METRIC, TRIAL_ONLY
from .search import BEST_FILE, DEFAULT_TRIAL_EPOCHS, Search, run
from .study import STUDY_NAME


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imgclf-tune", description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--data", required=True, help="data root with train/ [valid/ test/] (or training/ validation/ "
                                                 f"test/); folders: {', '.join(SPLIT_CHANNELS)} (required)")
    p.add_argument("--output", default="imgclf-tuning", help="study, features, trials and best.json; rerunning "
                                                             "the same command here resumes the search "
                                                             "(default: imgclf-tuning)")
    p.add_argument("--trials", type=int, default=8, help="finished (complete or pruned) trials to run (default: 8)")
    p.add_argument("--storage", help="a study shared by several workers, on one machine or several: an RDB URL "
                                     "(sqlite:///tuning.db, postgresql://...) or journal:///shared/fs/study.journal "
                                     "(default: the study in --output)")
    p.add_argument("--study", default=STUDY_NAME, help=f"the study's name in --storage (default: {STUDY_NAME})")
    p.add_argument("--pruner", default=DEFAULT_PRUNER, choices=PRUNERS,
                   help=f"stop trials whose per-epoch objective lags (default: {DEFAULT_PRUNER})")
    p.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed (default: 0)")
    p.add_argument("--no-features", dest="features", action="store_false",
                   help="push every image through the backbone in every trial, with augmentation (default: a "
                        "frozen backbone's features computed once)")
    p.add_argument("--verbose", action="store_true",
                   help="the training jobs' own log lines, and the traceback of an error (default: off)")
    hps = p.add_argument_group("hyperparameters fixed in every trial")
    for hp in hyperparameters.HYPERPARAMETERS:
        if hp.name not in TRIAL_ONLY:
            text = (f"{hp.help}, in each trial (default: {DEFAULT_TRIAL_EPOCHS})" if hp.name == hyperparameters.EPOCHS
                    else hyperparameters.flag_help(hp))
            hps.add_argument(f"--{hp.name}", dest="hp_" + hp.dest, metavar="VALUE", help=text)
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stdout,
                        format=LOG_FORMAT)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fixed = {hp.name: getattr(args, "hp_" + hp.dest) for hp in hyperparameters.HYPERPARAMETERS
             if getattr(args, "hp_" + hp.dest, None) is not None}
    with user_errors("imgclf-tune", args.verbose):
        root = Path(args.data)
        channels = {SPLIT_CHANNELS[name]: (root / name).resolve() for name in check_layout(root)}
        search = Search(channels, Path(args.output).resolve(), trials=args.trials, fixed=fixed, pruner=args.pruner,
                        seed=args.sampler_seed, features=args.features, storage=args.storage, study_name=args.study)
        with search_runs(search) as runs:
            best = run(search, runs=runs)
    print(f"best trial {best['trial']}: {OBJECTIVE_METRIC}={best['objective']['value']:.4f}")
    print(f"estimator.set_hyperparameters(**{json.dumps(best['hyperparameters'])})")
    print(f"written to {search.output / BEST_FILE}; final model: imgclf train --best {search.output / BEST_FILE} "
          f"--data ... ({FINAL_EPOCHS} epochs unless --epochs)")


if __name__ == "__main__":
    main()
