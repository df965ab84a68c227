"""Metric definitions shared by the training callbacks, the benchmarks and the report (docs/metrics.md)."""

from __future__ import annotations

import math
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from gqa_sweep.model.decode import StaticDecoder, resolve_mode
from gqa_sweep.model.shape import ModelConfig, non_embedding_params, train_flops_per_token
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


# A GPU run's decode is measured where the cache matters: the batch grows until the MHA twin's full cache is this
# many times the weights, so a step's bytes are mostly cache and fewer KV heads show (docs/metrics.md).
CACHE_OVER_WEIGHTS = 4


def cache_bound_batch(cfg: ModelConfig, floor: int, elem: int, free_bytes: float) -> int:
    """Smallest power-of-two batch >= `floor` whose G=H (MHA) cache of block_size tokens per sequence holds
    CACHE_OVER_WEIGHTS x the MHA model's matmul weights: the same batch for every G of a sweep. Halved (not below
    `floor`) while that cache would take over half of `free_bytes`."""
    mha = cfg.mha_twin
    per_seq, weights = mha.kv_bytes_per_token(elem) * mha.block_size, non_embedding_params(mha) * elem
    batch = 1 << max(floor - 1, 0).bit_length()
    while batch * per_seq < CACHE_OVER_WEIGHTS * weights:
        batch *= 2
    while batch > floor and batch * per_seq > free_bytes / 2:
        batch //= 2
    return batch


def cache_bound(m, cfg: ModelConfig, device: torch.device, elem: int):
    """metrics.decode_cache_bound (auto: on CUDA): the batch rule of a cache-bound decode, or None."""
    bound = m.get("decode_cache_bound", "auto")
    if bound is True or (bound == "auto" and device.type == "cuda"):
        return partial(cache_bound_batch, cfg, elem=elem, free_bytes=free_memory_bytes(device))
    return None


def free_memory_bytes(device: torch.device) -> float:
    """Memory still free: CUDA's free bytes, or MemAvailable from /proc/meminfo on CPU (NaN if unknown)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return math.nan


@torch.no_grad()
def decode_tokens_per_s(
    model: DecoderLM, prompt: torch.Tensor, new_tokens: int, repeats: int = 3, mode: str = "eager"
) -> float:
    """Median tokens/s of KV-cached greedy decode steps after a prefill of `prompt` (B, T); prefill untimed.

    Each repeat times `new_tokens` single-token steps (the cache grows from T to T + new_tokens - 1 tokens read):
    B * new_tokens / their wall time. eager: a fresh cache and prefill per repeat, our step op by op; graph: one
    prefill, the static-cache step captured once in a CUDA graph (gqa_sweep/model/decode.py), every repeat
    replaying it from the prefill's end. Needs T + new_tokens <= block_size.
    """
    B, T = prompt.shape
    if T + new_tokens > model.cfg.block_size or new_tokens < 1:
        bs = model.cfg.block_size
        raise ValueError(f"prompt ({T}) + new_tokens ({new_tokens}) must be in [T+1, block_size={bs}]")
    was_training = model.training
    model.eval()
    device = prompt.device
    static = None
    if resolve_mode(mode, device) == "graph":
        cache = model.new_cache(B)
        first = model(prompt, cache)[:, -1].argmax(dim=-1, keepdim=True)
        static = StaticDecoder(model, cache, mode="graph")
    times = []
    for r in range(repeats + 1):  # the first round warms up the allocator and kernels
        if static is None:
            cache = model.new_cache(B)
            tok = model(prompt, cache)[:, -1].argmax(dim=-1, keepdim=True)
        _sync(device)
        t0 = time.perf_counter()
        if static is None:
            for _ in range(new_tokens):
                tok = model(tok, cache)[:, -1].argmax(dim=-1, keepdim=True)
        else:
            static.generate(first, new_tokens)
        _sync(device)
        if r:
            times.append(time.perf_counter() - t0)
    model.train(was_training)
    return B * new_tokens / statistics.median(times)
