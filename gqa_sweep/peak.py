"""The device's peak FLOP/s for MFU: the datasheet figure for known GPUs, else a measured dense-matmul peak.

CPUs (and GPUs missing from the datasheet table) have no published figure that holds for one machine, so the
peak is measured once: the fastest of a few square matmuls in the run's dtype, cached in a JSON file keyed by
device name, dtype, torch version and CPU thread count (a one-thread job has half the peak of a two-thread one).
The cache is `$GQA_SWEEP_CACHE/peak_flops.json` (default `~/.cache/gqa-sweep/`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gqa_sweep.metrics import device_name, peak_flops

CACHE_ENV = "GQA_SWEEP_CACHE"
TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "fp64": torch.float64}  # fmt: skip


def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gqa-sweep"
    return Path(root) / "peak_flops.json"


def cache_key(name: str, dtype: str, device_type: str) -> str:
    threads = f"|threads={torch.get_num_threads()}" if device_type == "cpu" else ""
    return f"{name}|{dtype}|torch {torch.__version__}{threads}"


def measure_matmul_flops(device: torch.device, dtype: str, size: int = 1024, repeats: int = 5) -> float:
    """Dense matmul FLOP/s on `device`: the fastest of `repeats` (size x size) @ (size x size) products."""
    a, b = (torch.randn(size, size, device=device, dtype=TORCH_DTYPES[dtype]) for _ in "ab")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up: thread pools, kernel selection
        a @ b
    best = math.inf
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def resolve_peak(
    name: str, dtype: str, device_type: str, measure: Callable[[], float], cache: Path | None = None
) -> tuple[float, str]:
    """(peak FLOP/s, "datasheet" | "measured"): the datasheet figure when the device has one, else the cached
    measurement, else `measure()` (stored in the cache for the next run)."""
    sheet = peak_flops(name, dtype)
    if math.isfinite(sheet):
        return sheet, "datasheet"
    cache = cache or cache_file()
    key = cache_key(name, dtype, device_type)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known = {**known, key: measure()}
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: parallel jobs may race, but a reader never sees half a file.
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, delete=False, suffix=".tmp") as f:
            json.dump(known, f, indent=1, sort_keys=True)
        os.replace(f.name, cache)
    return float(known[key]), "measured"


def device_peak(device: torch.device, dtype: str) -> tuple[float, str]:
    """The peak a run's MFU is taken against, and where it comes from."""
    device = torch.device(device)
    return resolve_peak(device_name(device), dtype, device.type, lambda: measure_matmul_flops(device, dtype))
