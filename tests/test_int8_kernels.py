import io
import os
import subprocess
import sys

import numpy as np
import pytest
from test_export import exported  # noqa: F401  (fixture: an artifact with its OpenVINO formats)

from imgclf.artifact import export, int8_kernels
from imgclf.artifact.int8_kernels import AVX2, VNNI, AVX2Runner

pytestmark = [pytest.mark.openvino,
              pytest.mark.skipif(not export.openvino_available(), reason="needs the openvino extra")]
ON_X86 = int8_kernels.platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.parametrize("flags, cap, expected", [
    ({"avx2", "avx512f", "avx512_vnni"}, None, VNNI),
    ({"avx2", "avx_vnni"}, None, VNNI),
    ({"avx2", "avx512f", "amx_int8", "amx_tile"}, None, VNNI),
    ({"avx2", "avx512f"}, None, AVX2),  # AVX-512 without VNNI sums pairs in int16 like AVX2
    ({"avx2"}, None, AVX2),
    ({"avx2", "avx512_vnni"}, "AVX2", AVX2),  # oneDNN capped below VNNI
    ({"avx2", "avx512_vnni"}, "avx512_core", AVX2),
    ({"avx2", "avx512_vnni"}, "AVX512_CORE_VNNI", VNNI),
])
def test_kernels_follow_the_cpu_flags_and_onednn_cap(monkeypatch, flags, cap, expected):
    monkeypatch.setattr(int8_kernels.platform, "machine", lambda: "x86_64")
    environ = {int8_kernels.CAP_ENV: cap} if cap else {}
    assert int8_kernels.int8_kernels(flags, environ) == expected


def test_other_machines_are_their_own_kind(monkeypatch):
    monkeypatch.setattr(int8_kernels.platform, "machine", lambda: "aarch64")
    assert int8_kernels.int8_kernels({"asimd"}, {}) == "aarch64"


def test_arrays_cross_the_pipe_framing_unchanged():
    stream = io.BytesIO()
    arrays = [np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.zeros((0, 5), np.float32), np.ones(7, np.float32)]
    for a in arrays:
        int8_kernels.write_array(stream, a)
    stream.seek(0)
    for a in arrays:
        got = int8_kernels.read_array(stream)
        assert got.shape == a.shape and np.array_equal(got, a)
    with pytest.raises(EOFError):
        int8_kernels.read_array(stream)


CAPPED = """
import sys, numpy as np
from imgclf.artifact.openvino_runtime import compile_model, read_model
np.save(sys.argv[2], compile_model(read_model(sys.argv[1]))(np.load(sys.argv[3]))[0])
"""


@pytest.mark.skipif(not ON_X86, reason="oneDNN's ISA cap is x86's")
def test_the_avx2_child_computes_what_a_process_capped_to_avx2_does(exported, tmp_path):
    """and, on a CPU with VNNI, not what this process's own int8 kernels do: the cap took effect."""
    model_dir, _, card, _ = exported
    ir = model_dir / card.formats["openvino_int8"].file
    pixels = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    subprocess.run([sys.executable, "-c", CAPPED, str(ir), str(tmp_path / "capped.npy"), str(tmp_path / "pixels.npy")],
                   env={**os.environ, int8_kernels.CAP_ENV: "AVX2"}, check=True)
    with AVX2Runner(ir) as child:
        got, one = child(pixels)[0], child(pixels[:1])[0]
    assert np.array_equal(got, np.load(tmp_path / "capped.npy"))
    assert np.array_equal(one, got[:1])  # one process serves every batch
    own = export.compile_model(export.read_model(ir))(pixels)[0]
    if int8_kernels.int8_kernels() == VNNI:
        assert not np.array_equal(got, own)
    else:
        assert np.array_equal(got, own)


def test_a_child_that_dies_is_a_clear_error(tmp_path):
    with AVX2Runner(tmp_path / "missing.xml") as child, pytest.raises(RuntimeError, match="AVX2 child process ended"):
        child(np.zeros((1, 3, 8, 8), np.float32))
