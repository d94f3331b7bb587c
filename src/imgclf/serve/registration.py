"""`POST /models` on a multi-model endpoint (SageMaker loading a model), checked and completed
before multi-model-server sees it:

- the batching and worker settings of the environment, unless the call sets them;
- the model's `url` must be a folder (or a model.tar.gz) under the models folder
  (/opt/ml/models): MMS would otherwise download an archive from any URL, handler code included;
- a model.tar.gz (the url itself, or the only thing in the folder) is extracted safely
  (archive.py) into a folder of the server's own, which MMS then loads.
"""
from __future__ import annotations

import json
import re
import uuid
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from ..artifact.archive import UnsafeArchive, packed_model, safe_extract

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class RegistrationError(ValueError):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def complete(path: str, query: str, body: bytes, defaults: dict[str, int], models_dir: Path | None,
             stage_dir: Path | None) -> tuple[str, bytes]:
    """The (path, body) to send MMS for `POST /models` with this query string and body."""
    if body.strip():
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise RegistrationError(HTTPStatus.BAD_REQUEST, "POST /models: the body is not JSON") from None
        if not isinstance(doc, dict):
            raise RegistrationError(HTTPStatus.BAD_REQUEST, "POST /models: the body must be a JSON object")
    else:
        doc = {k: v[0] for k, v in parse_qs(query).items()}
    doc = {**defaults, **doc}
    if models_dir is not None:
        doc["url"] = local_model(str(doc.get("url", "")), str(doc.get("model_name", "")), models_dir, stage_dir)
    if body.strip():
        return path, json.dumps(doc).encode()
    return f"{path}?{urlencode(doc)}", body


def local_model(url: str, name: str, models_dir: Path, stage_dir: Path | None) -> str:
    """The folder MMS should load for `url`: checked to lie under `models_dir`, extracted when
    it is a model.tar.gz."""
    if not MODEL_NAME.fullmatch(name):
        raise RegistrationError(HTTPStatus.BAD_REQUEST, f"POST /models: bad model_name {name!r}")
    target = Path(url.removeprefix("file://"))
    root = models_dir.resolve()
    resolved = target.resolve()
    if not target.is_absolute() or root not in resolved.parents:
        raise RegistrationError(HTTPStatus.FORBIDDEN, f"POST /models: the url must be a folder under {models_dir}")
    archive = resolved if resolved.is_file() and resolved.name.endswith(".tar.gz") else packed_model(resolved)
    if archive is None:
        return str(resolved)
    if stage_dir is None:
        raise RegistrationError(HTTPStatus.BAD_REQUEST, "POST /models: archives are not accepted here")
    dest = stage_dir / f"{name}-{uuid.uuid4().hex[:8]}"
    try:
        return str(safe_extract(archive, dest))
    except UnsafeArchive as e:
        raise RegistrationError(HTTPStatus.BAD_REQUEST, f"POST /models: {archive.name} refused: {e}") from None
