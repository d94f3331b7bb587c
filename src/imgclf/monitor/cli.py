"""`imgclf monitor CAPTURE --baseline MODEL --output DIR [--ground-truth GT] [--fail-on-drift]`:
captured traffic against the model's baseline; prints `monitor: records=<n> drift=<yes|no> ...` last.
The same program runs in a SageMaker Processing job (`imgclf monitor ... --processing`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..names import UserError

DRIFT_EXIT = 3  # --fail-on-drift: what a scheduler sees when drift was found


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("capture", help="data-capture folder or s3:// prefix (JSON lines files at any depth)")
    p.add_argument("--baseline", required=True, metavar="MODEL",
                   help="the model: its folder, its model.tar.gz, or an s3:// URI of that archive")
    p.add_argument("--output", required=True, help="folder for report.html, violations.json, statistics.json")
    p.add_argument("--ground-truth", metavar="GT", help="ground truth in SageMaker's merge format, by inferenceId: "
                                                       "a folder or s3:// prefix of JSON lines (default: none)")
    p.add_argument("--fail-on-drift", action="store_true", help=f"exit {DRIFT_EXIT} when drift is found "
                                                                "(default: exit 0)")


def run(args) -> int:
    """The run the arguments ask for; its exit code."""
    from . import analysis, baseline_source
    from .capture import read_capture, read_ground_truth

    try:
        model = baseline_source.load(args.baseline)
        capture = read_capture(args.capture, model.baseline.classes)
        truth = read_ground_truth(args.ground_truth, model.baseline.classes) if args.ground_truth else None
    except FileNotFoundError as e:
        raise UserError(str(e)) from e
    result = analysis.analyse(model, capture, truth)
    analysis.write(result, Path(args.output))
    print(f"report: {Path(args.output) / analysis.REPORT_FILE}")
    print(analysis.verdict_line(result), flush=True)
    return DRIFT_EXIT if result.drift and args.fail_on_drift else 0


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="imgclf-monitor", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        code = run(args)
    except UserError as e:
        print(f"imgclf-monitor: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
