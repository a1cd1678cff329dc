"""Is a CUDA GPU visible to this process? Asked of the driver itself, without heavy imports.

xgboost 3 with device="cuda" and no GPU only warns and trains on the CPU, so a GPU case must
check before it runs, or a CPU run would be reported as a GPU run.
"""

from __future__ import annotations

import ctypes
import functools
import os

_HIDDEN = {"", "-1", "none", "void", "nodevfiles"}


@functools.cache
def visible_cuda_devices() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip().lower() in _HIDDEN:
        return 0
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def missing_gpu_failure() -> str:
    return (
        "no CUDA GPU visible and a GPU is required (--nbgate-require-gpu / NBGATE_REQUIRE_GPU): "
        "this job must run on a GPU runner with the NVIDIA driver"
    )


def missing_gpu_reason() -> str:
    return (
        "no CUDA GPU visible: run it on a GPU runner (CI: the TRAIN_GPU_RUNNER tag); "
        "--nbgate-require-gpu makes this a failure"
    )
