"""The baseline of a model from wherever the model is: its folder, its model.tar.gz, or that
archive in S3. Only baseline.json and evaluation.json are read (never the weights)."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..artifact.archive import read_members
from ..artifact.baseline import BASELINE_FILE, EVALUATION_FILE, Baseline

WANTED = (BASELINE_FILE, EVALUATION_FILE)


@dataclass(frozen=True)
class ModelBaseline:
    baseline: Baseline
    evaluation: dict | None  # None for a model evaluated on nothing


def _files(source: str) -> dict[str, bytes]:
    if source.startswith("s3://"):
        import boto3

        bucket, _, key = source[len("s3://"):].partition("/")
        with tempfile.TemporaryFile() as f:
            boto3.client("s3").download_fileobj(bucket, key, f)
            f.seek(0)
            return read_members(f, WANTED)
    path = Path(source)
    if path.is_dir():
        return {name: (path / name).read_bytes() for name in WANTED if (path / name).is_file()}
    if path.is_file():
        with open(path, "rb") as f:
            return read_members(f, WANTED)
    raise FileNotFoundError(f"no model at {source}: give the model folder, its model.tar.gz, or an s3:// URI of it")


def load(source: str) -> ModelBaseline:
    files = _files(source)
    if BASELINE_FILE not in files:
        raise FileNotFoundError(f"no {BASELINE_FILE} in {source}: the model was trained before monitoring "
                                "baselines existed; train it again to monitor it")
    evaluation = json.loads(files[EVALUATION_FILE]) if EVALUATION_FILE in files else None
    return ModelBaseline(Baseline.from_dict(json.loads(files[BASELINE_FILE])), evaluation)
