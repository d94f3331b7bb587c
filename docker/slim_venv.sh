#!/bin/sh
# Removes from the image's venv what no job reads at run time (run in the build stage, after
# `pip check`; pip's metadata stays whole, so `pip check` still passes). Sizes measured on the
# full venv (torch 2.14.1 with its CUDA 13 wheels, triton 3.8.0):
#   sh docker/slim_venv.sh /opt/venv
set -eu
site=$(echo "$1"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "slim_venv.sh: no site-packages under $1" >&2; exit 1; }
before=$(du -sm "$1" | cut -f1)
# triton's copies of NVIDIA's CUDA profiling interface (cupti, twice: 278 MB), which only its proton
# profiler loads; nvidia-cuda-cupti's libcupti, which torch's profiler uses, stays
rm -rf "$site/triton/backends/nvidia/lib/cupti" "$site/triton/backends/nvidia/lib/cupti-blackwell"
# libtriton.so ships DWARF debug information (267 of its 505 MB); the code and symbols stay
if [ -f "$site/triton/_C/libtriton.so" ]; then strip --strip-debug "$site/triton/_C/libtriton.so"; fi
# nvrtc's alternative build (.alt, 115 MB: for programs that link nvrtc statically otherwise; torch
# loads libnvrtc.so.13 and libnvrtc-builtins.so.13.0 by name) and cuSOLVER's multi-GPU library
# (cusolverMg, 104 MB), which no torch library needs (readelf -d: not NEEDED, never dlopened)
rm -f "$site"/nvidia/cu13/lib/libnvrtc.alt.so.* "$site"/nvidia/cu13/lib/libnvrtc-builtins.alt.so.* \
      "$site"/nvidia/cu13/lib/libcusolverMg.so.*
# static libraries (nothing links against the venv) and packages' own test suites
find "$site" -name '*.a' -type f -delete
find "$site" -depth -type d -name tests -path '*/site-packages/*/tests' \
     \( -path '*/pandas/tests' -o -path '*/numpy/*' -o -path '*/scipy/*' -o -path '*/networkx/*' \
        -o -path '*/sympy/*' -o -path '*/botocore/*' \) -exec rm -rf {} +
# OpenVINO's plugins for Intel GPUs and NPUs (51 MB): serving runs OpenVINO on the CPU only
rm -f "$site"/openvino/libs/libopenvino_intel_gpu_plugin.so "$site"/openvino/libs/libopenvino_intel_npu_plugin.so
echo "slim_venv.sh: $1 from ${before} MB to $(du -sm "$1" | cut -f1) MB"
