"""Metric definitions shared by the training callbacks, the benchmarks and the report (docs/metrics.md)."""

from __future__ import annotations

import math
import statistics
import time

import torch

from gqa_sweep.model.shape import train_flops_per_token
from gqa_sweep.model.transformer import DecoderLM

# Dense peak FLOP/s per device (vendor datasheets, no sparsity). Keys are substrings of
# torch.cuda.get_device_name(); the first match wins, so specific names come first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "tf32": 494.5e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12, "tf32": 378e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "tf32": 494.5e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12, "tf32": 156e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12, "tf32": 183e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12, "tf32": 60e12}),
    ("A10", {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12, "tf32": 62.5e12}),
    ("RTX 4090", {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12, "tf32": 82.6e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
]

def precision_dtype(precision: str | int) -> str:
    """Lightning precision flag -> the dtype the matmuls run in ('bf16-mixed' -> 'bf16', 32 -> 'fp32')."""
    p = str(precision)
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16"):
        return "fp16"
    if p.startswith("64"):
        return "fp64"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 and torch.cuda.is_available() else "fp32"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return "CPU"


def peak_flops(name: str, dtype: str) -> float:
    """Datasheet peak FLOP/s for `dtype` on the named device, NaN when unknown (CPUs included)."""
    for key, peaks in PEAK_FLOPS:
        if key in name:
            return peaks.get(dtype, math.nan)
    return math.nan


def flops_per_token(model: DecoderLM, seq_len: int) -> float:
    """Training FLOPs per token: gqa_sweep.model.shape.train_flops_per_token (6*N + 12*L*H*d_head*T)."""
    return train_flops_per_token(model.cfg, seq_len)


def count_spikes(values: list[float], window: int, k: float) -> float:
    """Steps whose value exceeds the mean of the previous `window` steps by more than k standard deviations.

    NaN ("not measured") when the series never fills one window: 0 would claim a run shorter than the
    window had no spike.
    """
    if len(values) <= window:
        return math.nan
    spikes = 0
    for i in range(window, len(values)):
        prev = values[i - window : i]
        if not all(math.isfinite(v) for v in prev) or not math.isfinite(values[i]):
            continue
        mu, sd = statistics.fmean(prev), statistics.pstdev(prev)
        if sd > 0 and values[i] > mu + k * sd:
            spikes += 1
    return spikes


def percentiles(values: list[float], qs: tuple[float, ...]) -> tuple[float, ...]:
    """Linear-interpolated percentiles (numpy's default) of `values`; NaN for each when there are none."""
    xs = sorted(v for v in values if math.isfinite(v))
    if not xs:
        return tuple(math.nan for _ in qs)
    out = []
    for q in qs:
        pos = (len(xs) - 1) * q / 100
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        out.append(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))
    return tuple(out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_tokens_per_s(model: DecoderLM, prompt: torch.Tensor, new_tokens: int, repeats: int = 3) -> float:
    """Median tokens/s of KV-cached greedy decode steps after a prefill of `prompt` (B, T); prefill untimed.

    Each repeat prefills a fresh cache, then times `new_tokens` single-token steps (the cache grows from T to
    T + new_tokens - 1 tokens read): B * new_tokens / their wall time. Needs T + new_tokens <= block_size.
    """
    B, T = prompt.shape
    if T + new_tokens > model.cfg.block_size or new_tokens < 1:
        bs = model.cfg.block_size
        raise ValueError(f"prompt ({T}) + new_tokens ({new_tokens}) must be in [T+1, block_size={bs}]")
    was_training = model.training
    model.eval()
    device = prompt.device
    times = []
    for r in range(repeats + 1):  # the first round warms up the allocator and kernels
        cache = model.new_cache(B)
        tok = model(prompt, cache)[:, -1].argmax(dim=-1, keepdim=True)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            tok = model(tok, cache)[:, -1].argmax(dim=-1, keepdim=True)
        _sync(device)
        if r:
            times.append(time.perf_counter() - t0)
    model.train(was_training)
    return B * new_tokens / statistics.median(times)
