"""`imgclf-export`: add the OpenVINO copies to a model artifact that lacks them (one written
before training stored them, or without the `openvino` extra), so that the CPU image, which
serves them without torch, can serve it. Runs where torch is (the full image, or the venv):

    imgclf-export MODEL_DIR                 # float32 copy (model.xml): the same answers as torch
    imgclf-export MODEL_DIR --data DIR      # and the int8 copy, calibrated and checked on DIR
    docker run --rm -v $PWD/model:/opt/ml/model IMAGE imgclf-export /opt/ml/model

DIR is a folder of class folders (a validation channel): both copies are checked against the
torch network on it and the result recorded in model.json, as training does.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..artifact.card import ModelError, ServingFormat, write_card
from ..artifact.export import export_serving_formats
from ..artifact.images import PROBE_IMAGES, EvalTransform, probe_batch
from ..artifact.network import load_artifact, to_openvino
from ..artifact.openvino_runtime import FILES, FP32_FORMAT, compile_model, openvino_available, save_model
from ..commandline import ArgumentParser, add_verbose, user_errors
from ..names import LOG_FORMAT, UserError
from .data import ImageFolderDataset
from .presets import ClassificationPresetEval

log = logging.getLogger("imgclf.export")


def add_fp32(model_dir: Path, model: torch.nn.Module, card):
    """The float32 copy alone, its agreement unchecked (no labelled images): it is the same
    network, and the largest probability gap to torch on the probe images is logged."""
    ov_model = to_openvino(model, card.eval.crop_size)
    file = FILES[FP32_FORMAT]
    save_model(ov_model, model_dir / file)
    probe = probe_batch(PROBE_IMAGES, EvalTransform(card.eval))
    with torch.inference_mode():
        expected = model(torch.from_numpy(probe)).softmax(1).numpy()
    logits = compile_model(ov_model)(probe)[0]
    got = np.exp(logits - logits.max(1, keepdims=True))
    gap = float(np.abs(got / got.sum(1, keepdims=True) - expected).max())
    log.info("%s: largest probability gap to torch on %d probe images %.2g", FP32_FORMAT, len(probe), gap)
    card = replace(card, formats={**card.formats, FP32_FORMAT: ServingFormat(file, "fp32")})
    write_card(model_dir, card)
    return card


def main(args: argparse.Namespace) -> int:
    """0 when the copies are written; a UserError for what the user can fix (no OpenVINO, no artifact)."""
    if not openvino_available(calibration=args.data is not None):
        raise UserError(f"needs OpenVINO{' and NNCF' if args.data else ''}: run it in the full image, "
                        "or pip install 'imgclf[openvino]'")
    try:
        model, card = load_artifact(args.model_dir)
        if args.data is None:
            card = add_fp32(args.model_dir, model, card)
        else:
            images = ImageFolderDataset(args.data, card.classes, ClassificationPresetEval.from_settings(card.eval))
            card = export_serving_formats(args.model_dir, model, card, calibration=images, validation=images)
    except (ModelError, OSError, ValueError) as e:
        raise UserError(f"cannot export {args.model_dir}: {e}") from e
    log.info("%s now holds %s", args.model_dir, ", ".join(f"{name} ({f.file})" for name, f in card.formats.items()))
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imgclf-export",
                       description=__doc__.splitlines()[0].strip('`').split('`')[-1].strip(": "))
    p.add_argument("model_dir", type=Path, help="the artifact: a folder with model.json and model.pt")
    p.add_argument("--data", type=Path, help="labelled images (one folder per class) to calibrate the int8 copy "
                                             "on and to check both copies against torch (default: none, the "
                                             "float32 copy alone)")
    add_verbose(p)
    return p


def cli(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout)
    args = get_args_parser().parse_args(argv)
    with user_errors("imgclf-export", args.verbose):
        sys.exit(main(args))


if __name__ == "__main__":
    cli()
