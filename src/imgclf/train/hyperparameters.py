"""The training job's hyperparameters as data: one entry per name, read by the job and the launcher.

The training job builds its parser from `HYPERPARAMETERS`; the launcher (`imgclf train`,
`imgclf tune`) builds its flags from the same table and checks values with `parse` before a job
starts, without importing torch. Names are kebab-case as SageMaker passes them.
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..artifact.card import ARCHS
from ..commandline import ArgumentParser
from ..names import (
    DEBUG_SAVE_INTERVAL,
    MIN_DEBUG_SAVE_INTERVAL,
    MIN_PROFILER_INTERVAL_MS,
    PROFILER_INTERVAL_MS,
    UserError,
)
from . import recipe
from .contract import decode_value, hyperparameters_to_argv
from .recipe import BEST_KNOWN


def str2bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "y", "on"):
        return True
    if v in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter. `low`/`high` bound numbers (inclusive unless `open` names the side)."""

    name: str
    type: type
    default: object
    help: str = ""
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    open: str = ""  # "low", "high" or "both": that bound is excluded

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def in_range(self, value) -> bool:
        if value is None or (self.low is None and self.high is None):
            return True
        low_ok = self.low is None or (value > self.low if self.open in ("low", "both") else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.open in ("high", "both") else value <= self.high)
        return low_ok and high_ok

    def range_text(self) -> str:
        if self.low is None and self.high is None:
            return ""
        left = "(" if self.open in ("low", "both") else "["
        right = ")" if self.open in ("high", "both") or self.high is None else "]"
        return f"{left}{self.low if self.low is not None else '-inf'}, {self.high if self.high is not None else 'inf'}{right}"


# the names other modules set or leave out (the tuner, the launcher), spelled once
EPOCHS, LOG_INTERVAL, CHECKPOINT, SERVING_FORMATS = "epochs", "log-interval", "checkpoint", "serving-formats"
FEATURES, EXTRACT_FEATURES = "features", "extract-features"

HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("arch", str, "resnet50", "network", choices=ARCHS),
    Hyperparameter("pretrained", bool, True, "start from ImageNet weights (pretrained channel, baked-in file, "
                   "package, or torchvision's download); false trains from random initialisation"),
    Hyperparameter("freeze", bool, None, "train the new head only, the frozen backbone as in evaluation (batch-norm "
                   "statistics, dropout fixed); false fine-tunes all (default: the recipe's)"),
    Hyperparameter(EPOCHS, int, 15, "passes over the training data", low=1),
    Hyperparameter("batch-size", int, None, "per process (default: the recipe's; linear's is the original tuning "
                   "job's best trial)", low=1),
    Hyperparameter("lr", float, BEST_KNOWN["lr"], "SGD learning rate, of the head where the backbone has its own "
                   f"(default: {BEST_KNOWN['lr']}, the original tuning job's best trial)",
                   low=0, open="low"),
    Hyperparameter("momentum", float, BEST_KNOWN["momentum"], f"SGD momentum (default: {BEST_KNOWN['momentum']}, the same best trial's)", low=0, high=1),
    Hyperparameter("weight-decay", float, None, "SGD weight decay (default: the recipe's)", low=0),
    Hyperparameter("image-size", int, 224, "training crop; evaluation resizes to image-size / eval-crop-ratio and centre-crops",
                   low=16),
    Hyperparameter("num-workers", int, None, "DataLoader workers (default: CPUs per process)", low=0),
    Hyperparameter("processes-per-host", int, 1, "training processes per CPU instance, started by torchrun "
                   "(GPU instances start one per GPU)", low=1),
    Hyperparameter("seed", int, 0, "random seed (data order, head initialisation, held-out split)"),
    Hyperparameter("valid-split", float, 0.1, "fraction of training held out when there is no validation channel",
                   low=0, high=1, open="both"),
    Hyperparameter("early-stopping-patience", int, 0, "stop after this many epochs without a lower valid_loss (0: off)",
                   low=0),
    Hyperparameter(LOG_INTERVAL, int, 50, "steps between progress lines (0: off)", low=0),
    Hyperparameter("amp", bool, True, "mixed precision and channels_last: AMP on CUDA, bf16 autocast on CPUs with "
                   "AVX-512 BF16 or AMX when a timed probe finds it faster (on every rank of a distributed job)"),
    Hyperparameter("augment", bool, True, "random crops and flips of training images; false feeds them as "
                   "evaluation does"),
    Hyperparameter(FEATURES, bool, False, "frozen backbone: compute each image's backbone features once "
                   "(or read the features channel) and train the head on them; no augmentation"),
    Hyperparameter(EXTRACT_FEATURES, bool, False, "only compute the backbone features of every channel into "
                   "the model dir, for a features channel of later jobs"),
    Hyperparameter(CHECKPOINT, bool, True, "save a checkpoint every epoch and on SIGTERM, which a restarted job "
                   "resumes from (the local tuner's trials, rerun whole when interrupted, skip it)"),
    Hyperparameter(SERVING_FORMATS, bool, True, "also store OpenVINO float32 and int8 copies for CPU serving, "
                   "calibrated on training images and checked on the validation set (tuning trials skip them)"),
    # training recipe (recipe.py): `recipe` gives each ingredient below its default; a value set here wins
    Hyperparameter("recipe", str, None, "linear: frozen backbone, new head; finetune: the whole network with the "
                   "recipe's ingredients (label-smoothing to lp-steps); lp-ft: a linear probe on cached features, then finetune (default: "
                   f"{recipe.DEFAULT_RECIPE}; linear with freeze, features or extract-features)",
                   choices=tuple(recipe.RECIPES)),
    Hyperparameter("label-smoothing", float, None, "cross-entropy label smoothing (0: off)", low=0, high=1,
                   open="high"),
    Hyperparameter("ema-decay", float, None, "per-step decay of an EMA of the weights, evaluated each epoch and "
                   "kept when better on validation (0: off)", low=0, high=1, open="high"),
    Hyperparameter("warmup-epochs", float, None, "linear lr warmup from lr/100 (0: off)", low=0),
    Hyperparameter("lr-schedule", str, None, "after warmup, per step", choices=recipe.LR_SCHEDULES),
    Hyperparameter("backbone-lr-ratio", float, None, "backbone lr / head lr (1: the same)", low=0, high=1,
                   open="low"),
    Hyperparameter("norm-weight-decay", bool, None, "weight decay on norm layers and biases too"),
    Hyperparameter("freeze-bn-stats", bool, None, "batch-norm layers of a training backbone keep the running "
                   "statistics they were loaded with (default off with pretrained=false)"),
    Hyperparameter("crop-scale", float, None, "smallest area of a random resized crop, as a fraction of the "
                   "image (0.08: torchvision's)", low=0, high=1, open="low"),
    Hyperparameter("auto-augment", str, None, "augmentation policy after crop and flip",
                   choices=recipe.AUTO_AUGMENTS),
    Hyperparameter("random-erase", float, None, "probability of erasing a random rectangle (0: off)", low=0,
                   high=1),
    Hyperparameter("eval-crop-ratio", float, None, "evaluation/serving centre crop / resized short side "
                   "(0.875: 224 of 256; 0.9655: 224 of 232)", low=0, high=1, open="low"),
    Hyperparameter("lp-steps", int, None, "L-BFGS steps of the linear probe on cached backbone features before "
                   "training (0: off)", low=0),
    # debugger and profiler (imgclf.debug)
    Hyperparameter("profiler", bool, True, "system metrics, step timings, profiler rules and the HTML report in "
                   "the output data"),
    Hyperparameter("profiler-interval-ms", int, None, "system metrics sampling interval (default: profilerconfig.json's "
                   f"ProfilingIntervalInMilliseconds, else {PROFILER_INTERVAL_MS})", low=MIN_PROFILER_INTERVAL_MS),
    Hyperparameter("profiler-trace-steps", str, "", "FIRST-LAST: torch.profiler trace of these training steps "
                   "(counted from 1) in the output data"),
    Hyperparameter("profiler-device-sync", bool, False, "wait for the GPU between step phases, for exact "
                   "forward/backward times (slower)"),
    Hyperparameter("rules", bool, True, "evaluate the training rules (VanishingGradient, Overfit, Overtraining, "
                   "...) during training"),
    Hyperparameter("rule-parameters", str, "", 'JSON: parameters per rule, e.g. {"Overfit": {"patience": 3}, '
                   '"StepOutlier": {"stddev": 5}}; false instead of an object leaves a rule out'),
    Hyperparameter("debug-collections", str, "", "smdebug collections to save without a debughookconfig.json, "
                   "e.g. losses,weights,gradients,biases (saved to <output data>/tensors)"),
    Hyperparameter("debug-save-interval", int, DEBUG_SAVE_INTERVAL, "steps between saved tensors",
                   low=MIN_DEBUG_SAVE_INTERVAL),
    Hyperparameter("tensorboard-dir", str, "", "write TensorBoard event files here (imgclf.tracking); a job with "
                   "SageMaker's TensorBoardOutputConfig writes them to its LocalPath without it"),
)

BY_NAME = {hp.name: hp for hp in HYPERPARAMETERS}


class _ArgumentParser(ArgumentParser):  # whole flag names only, as every command line
    def error(self, message):  # report through the failure file instead of usage + exit(2)
        raise UserError(f"bad hyperparameter: {message}")


def _argparse_type(hp: Hyperparameter):
    return str2bool if hp.type is bool else hp.type


def _value_text(value) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return json.dumps(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def flag_help(hp: Hyperparameter) -> str:
    """A hyperparameter's meaning and its default, stated once: a recipe's ingredient left at None
    lists each recipe's value."""
    if "default" in hp.help:
        return hp.help
    if hp.default is None and hp.dest in recipe.INGREDIENTS:
        default = "the recipe's: " + ", ".join(f"{name} {_value_text(values[hp.dest])}"
                                               for name, values in recipe.RECIPES.items())
    else:
        default = _value_text(hp.default)
    return f"{hp.help} (default: {default})".lstrip()


def add_arguments(parser: argparse.ArgumentParser, table=HYPERPARAMETERS) -> None:
    for hp in table:
        parser.add_argument(f"--{hp.name}", type=_argparse_type(hp), default=hp.default, choices=hp.choices,
                            help=flag_help(hp))


def get_args_parser(description: str = "") -> argparse.ArgumentParser:
    """The training job's parser: every hyperparameter as a `--name` flag with its default."""
    parser = _ArgumentParser(prog="imgclf-train", description=description)
    add_arguments(parser)
    return parser


def parse(hyperparameters: Mapping[str, str], argv: list[str] | None = None,
          parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Typed, range-checked arguments from SageMaker's string hyperparameters, then command-line overrides."""
    parser = parser or get_args_parser()
    known = {a.option_strings[0][2:] for a in parser._actions if a.option_strings and a.dest != "help"}
    args = parser.parse_args(hyperparameters_to_argv(hyperparameters, known) + list(argv or []))
    for hp in HYPERPARAMETERS:
        value = getattr(args, hp.dest, None)
        if isinstance(value, float) and not math.isfinite(value) or not hp.in_range(value):
            raise UserError(f"bad hyperparameter: {hp.name}={value} is out of range {hp.range_text()}".rstrip())
    return recipe.resolve(args)


def typed(raw: Mapping[str, object]) -> dict:
    """Known hyperparameters typed by the table (`"\\"64\\""` and `"64"` both 64, `"true"` True), as
    `Estimator.set_hyperparameters(**...)` takes them; other names are left out."""
    out = {}
    for name, value in raw.items():
        if name in BY_NAME:
            hp = BY_NAME[name]
            text = decode_value(value if isinstance(value, str) else json.dumps(value))
            out[name] = None if text == "null" else _argparse_type(hp)(text)
    return out


# ---------------------------------------------------------------------------------------------
# the table of docs/training.md, generated from this one

TABLE_BEGIN = "<!-- hyperparameters: generated by `python -m imgclf.train.hyperparameters --write docs/training.md` -->"
TABLE_END = "<!-- /hyperparameters -->"


def _cell(value) -> str:
    if value is None or value == "":
        return "none"
    return f"`{json.dumps(value) if isinstance(value, bool) else value}`"


def markdown_table(table=HYPERPARAMETERS) -> str:
    """The hyperparameters as a Markdown table: name, type, default, allowed values, meaning."""
    rows = ["| name | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for hp in table:
        allowed = ", ".join(f"`{c}`" for c in hp.choices) if hp.choices else hp.range_text()
        meaning = hp.help.replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{hp.name}` | {hp.type.__name__} | {_cell(hp.default)} | {allowed} | {meaning} |")
    return "\n".join(rows) + "\n"


def with_table(text: str, table: str) -> str:
    """`text` with `table` between TABLE_BEGIN and TABLE_END (the markers kept)."""
    begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if begin < 0 or end < begin:
        raise ValueError(f"no {TABLE_BEGIN} ... {TABLE_END} markers")
    return text[:begin + len(TABLE_BEGIN)] + "\n\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imgclf.train.hyperparameters", allow_abbrev=False,
                                     description="the hyperparameter table as Markdown")
    parser.add_argument("--write", type=Path, metavar="PAGE",
                        help="write it between the markers of this page (docs/training.md) instead of printing it "
                             "(default: print it)")
    args = parser.parse_args(argv)
    if args.write is None:
        print(markdown_table(), end="")
        return
    text = args.write.read_text()
    args.write.write_text(with_table(text, markdown_table()))
    print(f"hyperparameter table written to {args.write}")


if __name__ == "__main__":
    main()
