"""gqa-bench: attention, decode and training-throughput benchmarks across G, beside reference implementations.

    gqa-bench attention [--batch B --seq T --heads H --d-head D]
    gqa-bench decode    [--model tiny|small|gpt2-124m --batch B --context 256 896 --new-tokens N]
    gqa-bench train     [--model tiny|small|gpt2-124m --batch B --seq T --steps N]
    common: [--quick] [--out DIR] [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--repeats N] [--warmup N]
            [--profile]  (also write a torch.profiler table of the top ops of each implementation)

Every subcommand sweeps G over the divisors of H, prints one row per G and writes `<out>/<kind>.csv`
(device, dtype, torch version and date as columns) and `<out>/<kind>.md` (the same in the header).
Competing implementations are timed in one process, interleaved repeat by repeat (the order flips every
repeat), so drift from a shared machine lands on all of them; warm-up is excluded; medians, min and max
are reported. CUDA times use events after a synchronize; CPU times use perf_counter.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
import torch.nn.functional as F

from gqa_sweep.metrics import device_name, flops_per_token, peak_flops
from gqa_sweep.model import DecoderLM, ModelConfig, divisors

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Vocabulary and context per model preset: a sweep takes them from its data, a benchmark sets them here.
_VOCAB_AND_BLOCK = {"tiny": (512, 256), "small": (8192, 512), "gpt2-124m": (50304, 1024)}


def _preset(name: str) -> dict:
    """The shape of the sweep's `model=<name>` (conf/model/<name>.yaml), so both mean the same model."""
    from omegaconf import OmegaConf

    m = OmegaConf.load(Path(__file__).parent / "conf" / "model" / f"{name}.yaml")
    vocab, block = _VOCAB_AND_BLOCK[name]
    keys = ("n_layers", "d_model", "n_heads", "d_head", "d_ff", "tie_embeddings")
    return {"vocab_size": vocab, "block_size": block, **{k: m[k] for k in keys}}


# Model presets shared by `decode` and `train`; --n-layers/--n-heads/--d-model/--[no-]tie-embeddings override them.
PRESETS = {name: _preset(name) for name in _VOCAB_AND_BLOCK}

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
    return "\n".join(parts)


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


# ------------------------------------------------------------------------------------------------ attention
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """The reference: K/V copied to H heads (HF `repeat_kv` semantics: a no-op at n_rep=1)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def attention_inputs(batch: int, seq: int, heads: int, groups: int, d_head: int, env: Env, seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = lambda h: (batch, h, seq, d_head)  # noqa: E731
    q, k, v = (torch.randn(shape(h), generator=g) for h in (heads, groups, groups))
    dy = torch.randn(shape(heads), generator=g)
    q, k, v = (t.to(env.device, env.dtype).requires_grad_() for t in (q, k, v))
    return q, k, v, dy.to(env.device, env.dtype)


def attention_fns(q, k, v, dy) -> dict[str, Callable[[], torch.Tensor]]:
    """Forward+backward of grouped SDPA (enable_gqa) and of the repeat-KV reference on the same tensors."""
    n_rep = q.shape[1] // k.shape[1]

    def run(attend):
        def step():
            q.grad = k.grad = v.grad = None
            y = attend()
            y.backward(dy)
            return y

        return step

    return {
        "grouped": run(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)),
        "reference": run(
            lambda: F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), is_causal=True)
        ),
    }


def bench_attention(a: argparse.Namespace, env: Env) -> tuple[pd.DataFrame, str]:
    rows, prof = [], ""
    for G in divisors(a.heads):
        q, k, v, dy = attention_inputs(a.batch, a.seq, a.heads, G, a.d_head, env, a.seed)
        fns = attention_fns(q, k, v, dy)
        t = interleaved(fns, env.device, a.warmup, a.repeats)
        mem = {}
        for name, fn in fns.items():
            # Free the last call's gradients first: freeing them inside would offset the peak by their size.
            q.grad = k.grad = v.grad = None
            mem[name] = peak_memory(fn, env.device)
        (gm, glo, ghi), (rm, rlo, rhi) = stats(t["grouped"]), stats(t["reference"])
        rows.append(dict(
            G=G, group_size=a.heads // G, grouped_ms=gm * 1e3, grouped_min_ms=glo * 1e3, grouped_max_ms=ghi * 1e3,
            reference_ms=rm * 1e3, reference_min_ms=rlo * 1e3, reference_max_ms=rhi * 1e3,
            time_ratio=(gm * 1e3) / (rm * 1e3), grouped_peak_MiB=mem["grouped"] / 2**20,
            reference_peak_MiB=mem["reference"] / 2**20,
            mem_ratio=(mem["grouped"] / 2**20) / (mem["reference"] / 2**20),
        ))  # fmt: skip
        if a.profile and G == 1:  # G=1 is where the reference repeats the most
            prof = profile_table(fns, env.device)
    return pd.DataFrame(rows), prof


# --------------------------------------------------------------------------------------------------- models
def model_config(a: argparse.Namespace, n_kv_heads: int, block_size: int | None = None) -> ModelConfig:
    base = dict(PRESETS[a.model])
    for key in ("n_layers", "n_heads", "d_model", "vocab_size", "tie_embeddings"):
        if getattr(a, key, None) is not None:
            base[key] = getattr(a, key)
    if block_size is not None:
        base["block_size"] = block_size
    return ModelConfig(**base, n_kv_heads=n_kv_heads)


# --------------------------------------------------------------------------------------------------- decode
def cache_bytes(cfg: ModelConfig, batch: int, ctx: int, bytes_per_element: int) -> int:
    """KV cache of `ctx` tokens for `batch` sequences: 2 * G * d_head * L * ctx * B * bytes."""
    return cfg.kv_bytes_per_token(bytes_per_element) * ctx * batch


def free_memory_bytes(device: torch.device) -> float:
    """Memory still free for caches: CUDA's free bytes, or MemAvailable from /proc/meminfo on CPU."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return math.nan


def decode_fn(model: DecoderLM, batch: int, ctx: int, new_tokens: int, seed: int) -> Callable[[], torch.Tensor]:
    """Greedy KV-cached decode of `new_tokens` tokens after a context of `ctx` tokens.

    The cache is filled with random K/V instead of running a prefill: per-token cost does not depend on the
    cached values, and a long CPU prefill would dominate the run. Every call restarts at length `ctx`.
    """
    p = model.embed.weight
    cache = model.new_cache(batch)
    g = torch.Generator().manual_seed(seed)
    for buf in cache.k + cache.v:
        buf[:, :, :ctx] = torch.randn(buf[:, :, :ctx].shape, generator=g).to(buf)
    first = torch.randint(model.cfg.vocab_size, (batch, 1), generator=g).to(p.device)

    @torch.no_grad()
    def run() -> torch.Tensor:
        cache.length = ctx
        tok = first
        for _ in range(new_tokens):
            tok = model(tok, cache)[:, -1].argmax(dim=-1, keepdim=True)
        return tok

    run.cache = cache  # keeps the buffers alive and inspectable
    return run


def bench_decode(a: argparse.Namespace, env: Env) -> tuple[pd.DataFrame, str]:
    block = max(a.context) + a.new_tokens
    models: dict[int, DecoderLM] = {}
    fns: dict[tuple[int, int], Callable] = {}
    for G in divisors(model_config(a, 1).n_heads):
        torch.manual_seed(a.seed)
        models[G] = DecoderLM(model_config(a, G, block)).to(env.device, env.dtype).eval()
        for ctx in a.context:
            fns[(G, ctx)] = decode_fn(models[G], a.batch, ctx, a.new_tokens, a.seed)
    # All (G, context) cases interleaved in one run, so the G comparison is side by side.
    t = interleaved(fns, env.device, a.warmup, a.repeats)
    free = free_memory_bytes(env.device)
    peak_bw = peak_bandwidth(env.device_name)
    elem = torch.tensor([], dtype=env.dtype).element_size()
    rows = []
    for (G, ctx), times in t.items():
        cfg, model = models[G].cfg, models[G]
        med, lo, hi = (x / a.new_tokens for x in stats(times))
        # Per token the GPU streams every matmul weight once (the embedding is a row lookup) and the cache.
        weight_bytes = (model.num_params() - model.embed.weight.numel()) * elem
        kv = cache_bytes(cfg, a.batch, ctx, elem)
        bw = (weight_bytes + kv) / med
        per_seq = cfg.kv_bytes_per_token(elem) * (ctx + a.new_tokens) + cfg.vocab_size * 4  # cache + fp32 logits
        rows.append(dict(
            G=G, context=ctx, batch=a.batch, ms_per_token=med * 1e3, min_ms=lo * 1e3, max_ms=hi * 1e3,
            tokens_per_s=a.batch / med, cache_MiB=kv / 2**20, cache_bytes=kv, weight_MiB=weight_bytes / 2**20,
            achieved_GBps=bw / 1e9, hbm_frac=bw / peak_bw, max_batch=math.floor(free / per_seq),
        ))  # fmt: skip
    prof = ""
    if a.profile:
        prof = profile_table({f"G={G}": fns[(G, max(a.context))] for G in (1, max(models))}, env.device)
    return pd.DataFrame(rows).sort_values(["context", "G"], ignore_index=True), prof


# ---------------------------------------------------------------------------------------------------- train
def to_hf_for_training(model: DecoderLM):
    """The same model and weights as `transformers.LlamaForCausalLM`, SDPA attention, no KV cache objects."""
    from gqa_sweep.hf import to_hf

    hf = to_hf(model)
    hf.set_attn_implementation("sdpa")
    hf.config.use_cache = False  # training builds no DynamicCache per forward
    return hf


class StepClock:
    """Timestamps at the start of step 0 and after every step (synchronised), for tokens/s after warm-up."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, []

    def stamp(self) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def seconds_after(self, warmup: int) -> float:
        return self.stamps[-1] - self.stamps[warmup]


def lightning_clock_callback(clock: StepClock):
    import lightning as L

    class _Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                clock.stamp()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.stamp()

    return _Clock()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def bare_loop(model, forward, opt_cfg: dict, clip: float | None, loader, env: Env, clock: StepClock) -> None:
    """The plain PyTorch step: autocast forward, backward, clip, AdamW step, LR schedule, zero grads."""
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    autocast = torch.autocast(env.device.type, dtype=env.dtype, enabled=env.dtype != torch.float32)
    model.train()
    for i, (x, y) in enumerate(loader):
        if i == 0:
            clock.stamp()
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
        with autocast:
            loss = cross_entropy(forward(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip and clip > 0 else float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        clock.stamp()


def train_fns(a: argparse.Namespace, env: Env, G: int, loader) -> tuple[dict, dict[str, StepClock], DecoderLM]:
    """One round of warm-up + timed steps for: Lightning harness, bare loop, HF Llama (same weights)."""
    import lightning as L

    from gqa_sweep.module import LMModule

    torch.manual_seed(a.seed)
    steps = a.warmup + a.steps
    module = LMModule(model_config(a, G, a.seq).to_dict(), max_steps=steps, warmup_steps=1)
    bare = copy.deepcopy(module).to(env.device)
    hf = to_hf_for_training(copy.deepcopy(module.model))
    clocks = {k: StepClock(env.device) for k in ("harness", "bare", "hf")}
    precision = {"fp32": "32-true", "bf16": "bf16-mixed"}[env.dtype_name]

    def harness():
        L.Trainer(
            accelerator=env.device.type, devices=1, precision=precision, max_steps=steps, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0, callbacks=[lightning_clock_callback(clocks["harness"])],
        ).fit(module, train_dataloaders=loader)  # fmt: skip

    def bare_round():
        bare_loop(bare.model, bare.model, bare.configure_optimizers(), bare.hparams.grad_clip, loader, env,
                  clocks["bare"])  # fmt: skip

    # The same AdamW groups and schedule as LMModule.configure_optimizers, built over the HF parameters.
    hf_opt = SimpleNamespace(parameters=hf.parameters, hparams=module.hparams, device=env.device)

    def hf_round():
        bare_loop(hf, lambda x: hf(input_ids=x).logits, LMModule.configure_optimizers(hf_opt),
                  module.hparams.grad_clip, loader, env, clocks["hf"])  # fmt: skip

    return {"harness": harness, "bare": bare_round, "hf": hf_round}, clocks, bare.model


def token_loader(a: argparse.Namespace, vocab: int):
    g = torch.Generator().manual_seed(a.seed)
    data = torch.randint(vocab, (a.batch * (a.warmup + a.steps), a.seq + 1), generator=g)
    ds = torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:])
    return torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=False, drop_last=True)


def bench_train(a: argparse.Namespace, env: Env) -> tuple[pd.DataFrame, str]:
    import lightning  # noqa: F401  (its import sets its logger to INFO; quiet it after)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    peak = peak_flops(env.device_name, env.dtype_name)
    rows, prof = [], ""
    for G in divisors(model_config(a, 1).n_heads):
        loader = token_loader(a, model_config(a, G).vocab_size)
        fns, clocks, model = train_fns(a, env, G, loader)
        tok_s: dict[str, list[float]] = {k: [] for k in fns}
        items = list(fns.items())
        for r in range(a.repeats):  # a round = warm-up + timed steps of each implementation, order alternating
            for name, fn in items if r % 2 == 0 else items[::-1]:
                clocks[name].stamps.clear()
                fn()
                tok_s[name].append(a.batch * a.seq * a.steps / clocks[name].seconds_after(a.warmup))
        (hm, hlo, hhi), (bm, blo, bhi), (fm, flo, fhi) = (stats(tok_s[k]) for k in ("harness", "bare", "hf"))
        fpt = flops_per_token(model, a.seq)
        rows.append(dict(
            G=G, params=model.num_params(), harness_tok_s=hm, harness_min=hlo, harness_max=hhi,
            bare_tok_s=bm, bare_min=blo, bare_max=bhi, hf_tok_s=fm, hf_min=flo, hf_max=fhi,
            harness_over_bare=hm / bm, ours_over_hf=bm / fm, model_TFLOPs=hm * fpt / 1e12, mfu=hm * fpt / peak,
        ))  # fmt: skip
        if a.profile and G == 1:
            prof = profile_table(fns, env.device, row_limit=20)
    return pd.DataFrame(rows), prof


# ------------------------------------------------------------------------------------------------------ CLI
# Defaults per subcommand: (full, quick). Full sizes finish in minutes on a 2-core CPU; quick in seconds.
DEFAULTS = {
    "attention": dict(batch=(4, 1), seq=(1024, 64), heads=(16, 4), d_head=(64, 16), repeats=(10, 3), warmup=(2, 1)),
    "decode": dict(model=("gpt2-124m", "tiny"), batch=(8, 2), context=([128, 896], [16, 32]), new_tokens=(8, 4),
                   repeats=(5, 3), warmup=(1, 1), n_heads=(None, 4), d_model=(None, 64), vocab_size=(None, 256)),
    "train": dict(model=("small", "tiny"), batch=(4, 2), seq=(256, 32), steps=(4, 2), repeats=(3, 2),
                  warmup=(1, 1), n_heads=(None, 4), d_model=(None, 64), vocab_size=(None, 256)),
}  # fmt: skip
TITLES = {
    "attention": "causal SDPA forward+backward, grouped (enable_gqa) vs repeat-KV reference",
    "decode": "KV-cached greedy decode per token, one model per G",
    "train": "training tokens/s: Lightning harness vs bare loop vs transformers LlamaForCausalLM",
}
NOTES = {
    "attention": "time_ratio = grouped_ms / reference_ms (medians); peak = torch bytes allocated above the inputs "
    "during one forward+backward (CPU: replayed torch.profiler memory events).",
    "decode": "ms_per_token over the new tokens, cache pre-filled to `context`; tokens_per_s = batch / ms_per_token; "
    "cache_bytes = 2*G*d_head*L*context*batch*bytes; achieved_GBps = (matmul weight bytes + cache bytes) / time "
    "per token; hbm_frac = that / device peak (NaN when unknown, e.g. CPU); max_batch = free memory / (cache of "
    "context+new tokens + fp32 logits) per sequence.",
    "train": "tokens/s medians over rounds, each round = warm-up + timed steps; harness_over_bare = harness/bare; "
    "ours_over_hf = bare/hf (same loop, same weights, same AdamW and clipping); FLOPs/token = 6N + 12*L*H*d_head*T "
    "(N without the embedding table); mfu NaN where the device peak is unknown (CPU).",
}


def positive(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be a positive integer")
    return v


def non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return v


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="tiny sizes that finish in seconds on CPU")
    common.add_argument("--out", type=Path, default=Path("results/bench"), help="output dir (default results/bench)")
    common.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default bf16 on cuda, fp32 on cpu")
    common.add_argument("--repeats", type=positive, help="timed repeats (train: rounds)")
    common.add_argument("--warmup", type=non_negative, help="untimed warm-up calls (train: steps per round)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--profile", action="store_true", help="also write <out>/<kind>_profile.txt (top ops)")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", choices=tuple(PRESETS))
    model.add_argument("--n-layers", dest="n_layers", type=positive)
    model.add_argument("--n-heads", dest="n_heads", type=positive)
    model.add_argument("--d-model", dest="d_model", type=positive)
    model.add_argument("--vocab-size", dest="vocab_size", type=positive)
    model.add_argument("--tie-embeddings", dest="tie_embeddings", action=argparse.BooleanOptionalAction, default=None)

    p = argparse.ArgumentParser(prog="gqa-bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    att = sub.add_parser("attention", parents=[common], help=TITLES["attention"])
    for flag in ("batch", "seq", "heads", "d-head"):
        att.add_argument(f"--{flag}", dest=flag.replace("-", "_"), type=positive)
    dec = sub.add_parser("decode", parents=[common, model], help=TITLES["decode"])
    dec.add_argument("--batch", type=positive)
    dec.add_argument("--context", type=positive, nargs="+", help="context lengths, e.g. --context 128 896")
    dec.add_argument("--new-tokens", dest="new_tokens", type=positive)
    tr = sub.add_parser("train", parents=[common, model], help=TITLES["train"])
    for flag in ("batch", "seq", "steps"):
        tr.add_argument(f"--{flag}", type=positive)
    return p


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options from the full or --quick defaults; explicit options always win."""
    for key, (full, quick) in DEFAULTS[a.kind].items():
        if getattr(a, key, None) is None:
            setattr(a, key, quick if a.quick else full)
    if a.dtype is None:
        a.dtype = "bf16" if a.device == "cuda" else "fp32"
    if a.kind in ("decode", "train"):
        cfg = model_config(a, 1)  # validates the size options early, with the model's own messages
        if a.kind == "train" and a.seq > cfg.block_size:
            raise ValueError(f"--seq {a.seq} exceeds the {a.model} block_size={cfg.block_size}; use --seq <= it")
    if a.kind == "train" and a.dtype == "fp16":
        raise ValueError("train supports --dtype fp32 or bf16 (fp16 training needs a grad scaler); use --dtype bf16")
    if a.kind == "train" and a.warmup < 1:
        raise ValueError("train needs --warmup >= 1: the first step includes lazy optimizer-state allocation")
    return a


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        a = resolve(a)
        env = make_env(a.device, a.dtype)
    except ValueError as e:
        print(f"gqa-bench: error: {e}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        for message in ("does not have many workers", "but have no `val_dataloader`", "isinstance.treespec"):
            warnings.filterwarnings("ignore", message=f".*{message}.*")
        df, prof = {"attention": bench_attention, "decode": bench_decode, "train": bench_train}[a.kind](a, env)
    write_table(df, env, a.kind, a.out, TITLES[a.kind], NOTES[a.kind])
    if prof:
        (a.out / f"{a.kind}_profile.txt").write_text(prof)
        print(f"wrote {a.out / f'{a.kind}_profile.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
