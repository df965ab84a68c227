"""`gqa-bench serve`: decode throughput vs latency per G as the batch grows until memory runs out.

For each G the batch doubles from 1 while the weights plus a KV cache of `--context` tokens per sequence fit
in `--memory`; the last point is the largest batch that fits, the number `gqa-kv --memory` computes for the
same shape and budget (both use `gqa_sweep.model.kv.max_batch_size`). Fewer KV heads, smaller cache per sequence,
a larger batch: the Llama 2 paper's Fig. 24 picture. Every G that runs a batch size is timed side by side.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gqa_sweep.bench.common import Env, interleaved, model_config, stats
from gqa_sweep.bench.decode import decode_fn, first_tokens
from gqa_sweep.bench.variants import cases, kind, random_cache, variant_config
from gqa_sweep.model import kv
from gqa_sweep.model.shape import divisors
from gqa_sweep.model.transformer import DecoderLM


def _variants(a: argparse.Namespace) -> bool:
    return getattr(a, "attention", ["gqa"]) != ["gqa"]


def memory_budget(a: argparse.Namespace, env: Env) -> int:
    """--memory in bytes; without it the device's total memory on CUDA (CPU: the --quick/full default)."""
    if a.memory is not None:
        return kv.parse_bytes(a.memory)
    return torch.cuda.get_device_properties(env.device).total_memory


def batches(max_batch: int) -> list[int]:
    """1, 2, 4, ... while it fits, then the largest batch that fits: 1, 2, 4, ..., 64, 115."""
    out = [2**i for i in range(max_batch.bit_length()) if 2**i <= max_batch]
    return out + ([max_batch] if out and out[-1] != max_batch else [])


def plan(a: argparse.Namespace, env: Env, memory: int) -> dict:
    """Per G (per (attention, G) with --attention): the model (weights only) and the largest batch `memory` holds.

    Per sequence the cache is ModelConfig.kv_bytes_per_token x context (for GQA the same as kv.max_batch_size)."""
    out = {}
    H = model_config(a, 1).n_heads
    keys = cases(a) if _variants(a) else [("gqa", G) for G in divisors(H)]
    for att, G in keys:
        torch.manual_seed(a.seed)
        model = DecoderLM(variant_config(a, att, G or H, a.context)).to(env.device, env.dtype).eval()
        w, per_seq = model.num_params() * env.elem, model.cfg.kv_bytes_per_token(env.elem) * a.context
        out[(att, G) if _variants(a) else G] = model, max(memory - w, 0) // per_seq
    if min(b for _, b in out.values()) == 0:
        worst = min(out, key=lambda k: out[k][1])
        raise ValueError(
            f"--memory {memory / 1e9:.3g} GB does not hold the weights plus one sequence of {a.context} tokens at "
            f"{'G=' if isinstance(worst, int) else ''}{worst}; raise --memory or lower --context"
        )
    return out


def bench_serve(a: argparse.Namespace, env: Env) -> tuple[pd.DataFrame, str]:
    memory = memory_budget(a, env)
    models = plan(a, env, memory)
    H = model_config(a, 1).n_heads
    rows = []
    for b in sorted({b for _, m in models.values() for b in batches(m)}):
        fns = {}
        for G, (model, max_b) in models.items():
            if b in batches(max_b):
                # The cache holds `context` tokens after the last timed step: exactly what the budget counted.
                cache = random_cache(model, b, a.context - a.new_tokens, a.seed)
                fns[G] = decode_fn(model, cache, first_tokens(model.cfg, b, a.seed, env.device), a.new_tokens)
        for G, times in interleaved(fns, env.device, a.warmup, a.repeats).items():
            model, max_b = models[G]
            med, lo, hi = (x / a.new_tokens for x in stats(times))
            w, cache = model.num_params() * env.elem, fns[G].cache.nbytes(a.context)
            what = dict(G=G, kind=kv.attention_kind(G, H))
            if _variants(a):
                what = {"attention": G[0], "G": G[1], "kind": kind(*G, H)}
                what["case"] = what["kind"] + ("" if G[1] is None else f" G={G[1]}")
            rows.append(dict(
                **what, batch=b, context=a.context, max_batch=max_b,
                weight_bytes=w, cache_MiB=cache / 2**20, used_GB=(w + cache) / 1e9, memory_bytes=memory,
                ms_per_token=med * 1e3, min_ms=lo * 1e3, max_ms=hi * 1e3, tokens_per_s=b / med,
            ))  # fmt: skip
        del fns
    order = ["attention", "G", "batch"] if _variants(a) else ["G", "batch"]
    return pd.DataFrame(rows).sort_values(order, ignore_index=True), ""


def plot_serve(df: pd.DataFrame, title: str) -> Figure:
    """Throughput (tokens/s) against latency (ms per token per sequence), one line per G, batch annotated."""
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global backend state
    ax = fig.subplots()
    for G, t in df.groupby("case" if "case" in df else "G", sort=False):
        label = G if "case" in df else f"G={G} ({t.kind.iloc[0]})"
        line = ax.plot(t.ms_per_token, t.tokens_per_s, marker="o", label=label)[0]
        for x, y, b in zip(t.ms_per_token, t.tokens_per_s, t.batch):
            if b == t.batch.max() or b in (1, 16):
                ax.annotate(f"B={b}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color=line.get_color())  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency: ms per token per sequence")
    ax.set_ylabel("throughput: tokens/s (batch / step time)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="KV heads")
    return fig


def write_plot(df: pd.DataFrame, env: Env, a: argparse.Namespace, out) -> list:
    cfg = model_config(a, 1)
    title = (
        f"{cfg.n_layers} layers, d_model {cfg.d_model}, H={cfg.n_heads}, d_head {cfg.d_head}, context "
        f"{a.context}, {df.memory_bytes.iloc[0] / 1e9:.3g} GB budget\n"
        f"{env.device_name}, {env.dtype_name}, {env.date[:10]}"
    )
    fig = plot_serve(df, title)
    paths = [out / "serve.png", out / "serve.svg"]
    for p in paths:
        fig.savefig(p, dpi=150)
    return paths


def gqa_kv_command(df: pd.DataFrame, a: argparse.Namespace, env: Env) -> str:
    """The `gqa-kv` call whose max-batch column the MHA row must equal (weights of the MHA model)."""
    cfg, mha = model_config(a, 1), df[df.G == df.G.max()].iloc[0]
    if "attention" in df:  # --attention: the case whose cache is largest per sequence (it stops first)
        r = df.loc[df.max_batch.idxmin()]
        knobs = "" if r.attention == "gqa" else f" --attention {r.attention}"
        G = "" if r.attention == "mla" else f" --kv-heads {int(r.G)}"
        return (f"gqa-kv{knobs} --layers {cfg.n_layers} --heads {cfg.n_heads}{G} --head-dim {cfg.d_head} "
                f"--seq {a.context} --dtype {env.dtype_name} --memory {int(r.memory_bytes)} "
                f"--weights-bytes {int(r.weight_bytes)}")  # fmt: skip
    return (
        f"gqa-kv --layers {cfg.n_layers} --heads {cfg.n_heads} --kv-heads {cfg.n_heads} --head-dim {cfg.d_head} "
        f"--seq {a.context} --dtype {env.dtype_name} --memory {int(mha.memory_bytes)} "
        f"--weights-bytes {int(mha.weight_bytes)}"
    )
