"""What every benchmark shares: environment, interleaved timing, memory, model presets, output tables.

Competing implementations are timed in one process, interleaved repeat by repeat (the order flips every
repeat), so drift from a shared machine lands on all of them; warm-up is excluded; medians, min and max
are reported. CUDA times use events after a synchronize; CPU times use perf_counter.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from gqa_sweep.model.cache import Cache
from gqa_sweep.model.layers import rope_tables
from gqa_sweep.model.shape import ModelConfig, build_shape, non_embedding_params
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.metrics import device_name

# Kineto (torch.profiler's backend) prints `USDT: ... profiler_start/stop` lines to stderr on every profile;
# level 6 is above all of its message kinds. It is read when the profiler first starts, so setting it here
# (before any profile) is enough.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Vocabulary and context per model preset: a sweep takes them from its data, a benchmark sets them here.
_VOCAB_AND_BLOCK = {"tiny": (512, 256), "small": (8192, 512), "gpt2-124m": (50304, 1024)}


def _preset(name: str) -> dict:
    """The shape of the sweep's `model=<name>` (conf/model/<name>.yaml), so both mean the same model."""
    from omegaconf import OmegaConf

    m = OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / f"{name}.yaml")
    vocab, block = _VOCAB_AND_BLOCK[name]
    keys = ("n_layers", "d_model", "n_heads", "d_head", "d_ff", "tie_embeddings")
    return {"vocab_size": vocab, "block_size": block, **{k: m[k] for k in keys}}


# Model presets; --n-layers/--n-heads/--d-model/--d-head/--[no-]tie-embeddings override them. "cache-bound" is
# a decode shape whose KV cache outweighs its weights at 1k-4k tokens x batch 8-16 (60 MB of fp32 weights vs
# a 1 GiB MHA cache at 4k x 16), where decode time tracks G. "llama-7b" is Llama(-2)-7B's shape (random weights:
# speed does not depend on them); "llama-7b-layer" is 8 of its layers, a GPU decode shape whose MHA cache
# (128 KiB per token in bf16) outweighs its 3.5 GB of matmul weights from 27k cached tokens in all (16 x 1.7k).
_LLAMA_7B = dict(vocab_size=32000, block_size=4096, n_layers=32, d_model=4096, n_heads=32, d_head=128, d_ff=11008,
                 tie_embeddings=False)
PRESETS = {name: _preset(name) for name in _VOCAB_AND_BLOCK} | {
    "cache-bound": dict(vocab_size=8192, block_size=4096, n_layers=4, d_model=512, n_heads=16, d_head=32,
                        d_ff=None, tie_embeddings=False),
    "llama-7b": _LLAMA_7B,
    "llama-7b-layer": _LLAMA_7B | {"n_layers": 8},
}  # fmt: skip

# Peak HBM bandwidth in bytes/s by device-name substring; first match wins.
PEAK_HBM = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100 80GB", 2.0e12),
            ("A100-SXM4-80GB", 2.0e12), ("A100", 1.555e12)]  # fmt: skip


# ----------------------------------------------------------------------------------------------- environment
@dataclass
class Env:
    device: torch.device
    dtype_name: str
    device_name: str
    torch_version: str
    date: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def elem(self) -> int:
        """Bytes per element of the benchmark dtype."""
        return torch.tensor([], dtype=self.dtype).element_size()

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def columns(self) -> dict:
        return {"device": self.device_name, "dtype": self.dtype_name, "torch": self.torch_version, "date": self.date}


def make_env(device: str, dtype: str) -> Env:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    dev = torch.device(device)
    name = device_name(dev) + ("" if dev.type == "cuda" else f" ({torch.get_num_threads()} threads)")
    return Env(dev, dtype, name, torch.__version__, datetime.now().astimezone().isoformat(timespec="seconds"))


def peak_bandwidth(name: str) -> float:
    """Datasheet peak HBM bytes/s of the named device; NaN when unknown (CPUs included)."""
    return next((bw for key, bw in PEAK_HBM if key in name), math.nan)


def model_config(a: argparse.Namespace, n_kv_heads: int, block_size: int | None = None) -> ModelConfig:
    base = dict(PRESETS[a.model])
    for key in ("n_layers", "n_heads", "d_model", "d_head", "vocab_size", "tie_embeddings"):
        if getattr(a, key, None) is not None:
            base[key] = getattr(a, key)
    if getattr(a, "d_model", None) is not None and getattr(a, "d_head", None) is None:
        base["d_head"] = None  # a new width re-derives d_head = d_model / n_heads
    if block_size is not None:
        base["block_size"] = block_size
    return build_shape(base, n_kv_heads=n_kv_heads)


def weight_bytes(model: DecoderLM, elem: int) -> int:
    """Bytes of weights one decode step streams: every matmul weight once (the embedding is a row lookup)."""
    return non_embedding_params(model.cfg) * elem


def all_params(cfg: ModelConfig) -> int:
    """DecoderLM.num_params() from the shape: what a model holds in memory (the token embedding included)."""
    return non_embedding_params(cfg) + (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)


# ------------------------------------------------------------------------------------- born on the device
def generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded generator on `device`: caches, tokens and inputs are drawn where they live, never on the host."""
    return torch.Generator(device=device).manual_seed(seed)


def randn(shape: tuple[int, ...], g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=g, device=g.device, dtype=dtype)


def build_model(cfg: ModelConfig, env: Env, seed: int) -> DecoderLM:
    """The model born on env.device in env.dtype: shapes on meta, storage allocated on the device, weights drawn
    there (a 7B model is never built, initialised or cast on the host), RoPE tables computed there."""
    with torch.device("meta"):
        model = DecoderLM(cfg)
    model = model.to(env.dtype).to_empty(device=env.device)
    torch.manual_seed(seed)  # seeds every device's default generator, which reset_parameters draws from
    with torch.device(env.device):
        cos, sin = rope_tables(cfg)
    model.rope_cos.copy_(cos)
    model.rope_sin.copy_(sin)
    model.reset_parameters()
    return model.eval()


def random_cache(model: DecoderLM, batch: int, ctx: int, seed: int) -> Cache:
    """The model's empty cache (its dtype and device) with `ctx` tokens of random entries drawn in place: per-token
    cost does not depend on the values, and skipping a prefill keeps set-up short."""
    cache = model.new_cache(batch)
    g = generator(model.embed.weight.device, seed)
    for buf in cache.buffers():
        buf[:, :, :ctx].normal_(generator=g)
    cache.length = ctx
    return cache


def first_tokens(cfg: ModelConfig, batch: int, seed: int, device) -> torch.Tensor:
    return torch.randint(cfg.vocab_size, (batch, 1), generator=generator(device, seed), device=device)


class Stopwatch:
    """Wall seconds of a set-up block on `device` (synchronized: queued kernels count), reported apart from steps."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._t0


# -------------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes on `device` (CUDA events, so queued kernels are counted)."""
    if device.type == "cuda":
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, device: torch.device, warmup: int, repeats: int) -> dict[object, list[float]]:
    """Time every fn once per repeat, alternating the order, after `warmup` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[object, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(repeats):
        for key, fn in items if r % 2 == 0 else items[::-1]:
            times[key].append(time_call(fn, device))
    return times


def stats(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """Measured memory bandwidth in bytes/s: a large `dst.copy_(src)` moves 2 x nbytes (read + write).

    The default 512 MiB is far above any last-level cache, so this is the DRAM (or HBM) rate a decode step
    that streams its cache and weights can hope for.
    """
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    times = interleaved({"copy": lambda: dst.copy_(src)}, device, warmup=1, repeats=repeats)["copy"]
    return 2 * nbytes / statistics.median(times)


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes allocated by torch during one call of `fn`, above what was allocated before it.

    CUDA: the caching allocator's high-water mark. CPU: torch keeps no CPU high-water mark, so the
    alloc/free events of torch.profiler(profile_memory=True) are replayed in time order and their running
    sum's maximum is taken: tensors only (no allocator slack, no Python objects), as on CUDA.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return float(peak)


def profile_table(fns: dict, device: torch.device, row_limit: int = 15) -> str:
    """torch.profiler top-ops table (by self time) of one call of each fn: the evidence behind a ratio."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    parts = []
    for name, fn in fns.items():
        with profile(activities=acts) as prof:
            fn()
            synchronize(device)
        parts.append(f"## {name}\n\n{prof.key_averages().table(sort_by=sort, row_limit=row_limit)}")
        classes = op_classes(prof.key_averages(), device.type).to_markdown(index=False)
        parts.append(f"### {name}: self {'CUDA' if device.type == 'cuda' else 'CPU'} time by op class\n\n{classes}\n")
    return "\n".join(parts)


# The first pattern an op's name matches gives its class; aten ops left over are the elementwise work around the
# matmuls (RMSNorm, RoPE, SwiGLU's gate, residual adds, masks); names outside aten are framework and Python.
OP_CLASSES = (
    ("matmul", r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_mkldnn_mm|mkldnn_linear)"),
    ("attention (SDPA)", r"scaled_dot_product|flash_attention|_efficient_attention|_cudnn_attention"),
    ("softmax / cross-entropy", r"^aten::(_?log_softmax|nll_loss|_?softmax|cross_entropy)"),
    ("optimizer", r"^aten::(_fused_adamw|_foreach|lerp|addcdiv|addcmul)|Optimizer"),
    ("copies and casts", r"^aten::(copy_|_to_copy|to|clone|contiguous|cat|index_select|embedding|fill_|zero_|zeros)"),
    ("elementwise (norms, RoPE, SwiGLU, adds)", r"^aten::"),
    ("framework (autograd, Python, Lightning)", r""),
)


# On a GPU the rows classified are the device's own events (kernels, memcpy, memset), by kernel name: a CUDA graph's
# kernels have no aten op above them, and an aten row's device time would count its kernels a second time.
KERNEL_CLASSES = (  # attention first: its kernels are often CUTLASS or cuDNN ones too
    ("attention (SDPA)", r"(?i)fmha|flash|attention|sdpa|cudnn"),
    ("matmul", r"(?i)gemm|gemv|xmma|cublas|cutlass|nvjet"),
    ("softmax / cross-entropy", r"(?i)softmax|nll_loss|cross_entropy"),
    ("optimizer", r"(?i)adam|multi_tensor_apply"),
    ("copies and casts", r"(?i)copy|memcpy|memset|cat|index|embedding|fill"),
    ("elementwise (norms, RoPE, SwiGLU, adds)", r""),
)


def op_classes(averages, device: str = "cpu") -> pd.DataFrame:
    """Self time per op class of a profiler's key_averages: ms and share of the total. CPU: the ops' self CPU time
    (OP_CLASSES). CUDA: the GPU's own time, kernel by kernel (KERNEL_CLASSES), since host time says nothing about
    the GPU."""
    import re

    from torch.autograd import DeviceType

    classes = OP_CLASSES if device == "cpu" else KERNEL_CLASSES
    totals = dict.fromkeys((c for c, _ in classes), 0.0)
    for evt in averages:
        if device != "cpu" and getattr(evt, "device_type", DeviceType.CPU) == DeviceType.CPU:
            continue  # a host op: its kernels are counted as themselves
        cls = next(c for c, pattern in classes if re.search(pattern, evt.key))
        totals[cls] += (evt.self_cpu_time_total if device == "cpu" else evt.self_device_time_total) / 1e3
    whole = sum(totals.values()) or 1.0
    clock = "self CPU ms" if device == "cpu" else "self CUDA ms"
    return pd.DataFrame({"op class": list(totals), clock: list(totals.values()),
                         "share": [f"{100 * v / whole:.1f}%" for v in totals.values()]})  # fmt: skip


# --------------------------------------------------------------------------------------------------- output
def write_table(df: pd.DataFrame, env: Env, kind: str, out: Path, title: str, notes: str = "") -> tuple[Path, Path]:
    """Print the table and write `<out>/<kind>.csv` and `<out>/<kind>.md`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    full = df.assign(**env.columns())
    csv, md = out / f"{kind}.csv", out / f"{kind}.md"
    full.to_csv(csv, index=False)
    header = f"device: {env.device_name} | dtype: {env.dtype_name} | torch: {env.torch_version} | date: {env.date}"
    body = df.to_markdown(index=False, floatfmt=".4g")
    md.write_text(f"# gqa-bench {kind}: {title}\n\n{header}\n\n{notes}\n\n{body}\n".replace("\n\n\n", "\n\n"))
    print(f"{title}\n{header}\n{body}\nwrote {csv} and {md}")
    return csv, md
