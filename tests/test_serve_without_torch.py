"""Serving where torch is not installed (the CPU image), checked in this venv: a Python whose
site-packages hides torch, torchvision, CUDA's and NNCF's packages. The serving modules import, a
worker serves an exported artifact with OpenVINO and numpy and gives the torch path's answers,
and an artifact without the OpenVINO copies is refused, naming `imgclf-export`, which adds them."""
from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from serve_support import make_artifact
from test_export import exported  # noqa: F401  (fixture: an artifact with its OpenVINO formats)

from imgclf.artifact import export
from imgclf.artifact.card import load_card

pytestmark = [pytest.mark.openvino,
              pytest.mark.skipif(not export.openvino_available(), reason="needs the openvino extra")]
HIDDEN = ("torch", "functorch", "nvidia", "triton", "nncf", "efficientnet", "__editable__", "imgclf")
PHOTOS = sorted((ROOT / "local_test" / "test_dir" / "input" / "data" / "test").glob("*/*.jpg"))[:20]

WORKER = """
import json, sys
from pathlib import Path
from imgclf.serve.environment import ServingEnvironment
from imgclf.serve.handler import ImageClassifierHandler

class Context:
    def __init__(self, model_dir):
        self.system_properties = {"model_dir": model_dir, "gpu_id": None}
    def get_all_request_header(self, i):
        return {"Content-Type": "image/jpeg"}
    def set_response_content_type(self, i, value): pass
    def set_response_status(self, code=200, phrase="", idx=0): pass

model_dir, precision, *photos = sys.argv[1:]
env = ServingEnvironment(model_dir=Path(model_dir), models_dir=Path("unused"), precision=precision, top_k=1)
handler = ImageClassifierHandler(env)
handler.initialize(Context(model_dir))
answers = handler.handle([{"body": Path(p).read_bytes()} for p in photos], Context(model_dir))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "nncf"))
print(json.dumps({"runner": handler.runner.name, "answers": [json.loads(a) for a in answers], "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def python_without_torch(tmp_path_factory) -> list[str]:
    """A command line for this venv's Python with only the packages the CPU image has (and more):
    site-packages rebuilt from symlinks, leaving out HIDDEN."""
    farm = tmp_path_factory.mktemp("site-packages")
    (venv_site,) = [Path(p) for p in site.getsitepackages() if p.endswith("site-packages")]
    for entry in venv_site.iterdir():
        if not entry.name.lower().startswith(HIDDEN):
            (farm / entry.name).symlink_to(entry)
    setup = f"import site, sys; site.addsitedir({str(farm)!r}); sys.path.insert(0, {str(ROOT / 'src')!r}); "
    return [sys.executable, "-S", "-c", setup + "sys.argv[:1] = ['-']; exec(sys.argv.pop(1))"]


def run(python: list[str], code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*python, code, *args], capture_output=True, text=True, timeout=300)


def test_torch_is_really_hidden(python_without_torch):
    proc = run(python_without_torch, "import torch")
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr


def test_the_serving_modules_import_without_torch(python_without_torch):
    code = ("import sys, imgclf.serve.server, imgclf.serve.mms_entry, imgclf.serve.front, imgclf.artifact.card; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'nncf')))")
    proc = run(python_without_torch, code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def worker(python, model_dir, precision="fp32") -> dict:
    proc = run(python, WORKER, str(model_dir), precision, *map(str, PHOTOS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_worker_without_torch_gives_the_torch_path_s_answers(python_without_torch, exported):
    model_dir = exported[0]
    without = worker(python_without_torch, model_dir)
    assert without["runner"] == "openvino fp32" and without["loaded"] == []
    assert worker(python_without_torch, model_dir, "int8")["runner"] == "openvino int8"
    # the same worker with torch, on a copy of the artifact without the OpenVINO copies: torch's network
    torch_dir = make_torch_only(model_dir, model_dir.parent / "torch-only")
    with_torch = worker([sys.executable, "-c", "import sys; sys.argv[:1] = ['-']; exec(sys.argv.pop(1))"], torch_dir)
    assert with_torch["runner"] == "torch fp32 on cpu"
    ours = [a["predictions"][0][0] for a in without["answers"]]
    theirs = [a["predictions"][0][0] for a in with_torch["answers"]]
    assert [a["label"] for a in ours] == [a["label"] for a in theirs]
    assert np.allclose([a["probability"] for a in ours], [a["probability"] for a in theirs], atol=1e-4)


def make_torch_only(model_dir: Path, dest: Path) -> Path:
    dest.mkdir(exist_ok=True)
    shutil.copy(model_dir / "model.pt", dest)
    card = json.loads((model_dir / "model.json").read_text())
    (dest / "model.json").write_text(json.dumps({**card, "formats": {}}))
    return dest


def test_an_artifact_without_openvino_copies_is_refused_naming_imgclf_export(python_without_torch, tmp_path):
    model_dir = make_artifact(tmp_path / "model")
    code = ("import sys; from pathlib import Path; from imgclf.serve.runtime import unservable_reason; "
            "print(unservable_reason(Path(sys.argv[1])))")
    proc = run(python_without_torch, code, str(model_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no OpenVINO copy" in proc.stdout and "imgclf-export MODEL_DIR" in proc.stdout
    proc = run(python_without_torch, WORKER, str(model_dir), "auto", str(PHOTOS[0]))
    assert proc.returncode != 0 and "imgclf-export MODEL_DIR" in proc.stderr  # a worker refuses too

    # imgclf-export (here, with torch) adds the float32 copy; then the torch-free worker serves it
    export_run = subprocess.run([sys.executable, "-m", "imgclf.train.export_cli", str(model_dir)], capture_output=True,
                                text=True, timeout=300, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert export_run.returncode == 0, export_run.stdout[-3000:] + export_run.stderr[-3000:]
    assert "largest probability gap to torch" in export_run.stdout
    card = load_card(model_dir)
    assert card.formats["openvino_fp32"].file == "model.xml" and (model_dir / "model.xml").is_file()
    assert worker(python_without_torch, model_dir, "auto")["runner"].startswith("openvino")


def test_imgclf_export_with_data_adds_the_int8_copy_checked_on_it(exported, tmp_path):
    model_dir = make_torch_only(exported[0], tmp_path / "model")
    valid = exported[0].parent / "valid"
    proc = subprocess.run([sys.executable, "-m", "imgclf.train.export_cli", str(model_dir), "--data", str(valid)],
                          capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(ROOT / "src"),
                                                                            "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    formats = load_card(model_dir).formats
    assert set(formats) == {"openvino_fp32", "openvino_int8"}
    assert formats["openvino_fp32"].agreement.top1_agreement == 1.0
    missing = subprocess.run([sys.executable, "-m", "imgclf.train.export_cli", str(tmp_path / "nothing")],
                             capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT / "src")})
    assert missing.returncode == 2 and "not a model artifact" in missing.stderr
