"""`gqa-bench serve`: decode throughput vs latency per G as the batch grows until memory runs out.

For each G the batch doubles from 1 while the weights plus a KV cache of `--context` tokens per sequence fit
in `--memory`; the last point is the largest batch that fits, the number `gqa-kv --memory` computes for the
same shape and budget (both use `gqa_sweep.model.kv.max_batch_size`). Fewer KV heads, smaller cache per sequence,
a larger batch: the Llama 2 paper's Fig. 24 picture. Each G is built on the device, alone, and decodes with
--decode-mode (auto: the CUDA-graph step on a GPU, eager on the CPU); at each G's largest batch the table sets its
tokens/s against MHA's beside seed 001's 70B serving ratios (MHA 800, GQA-8 3200, MQA 4000 tokens/s).
"""

from __future__ import annotations

import argparse

import pandas as pd
from matplotlib.figure import Figure

from gqa_sweep.bench.common import (
    Env,
    Stopwatch,
    all_params,
    build_model,
    first_tokens,
    model_config,
    random_cache,
    stats,
    time_call,
)
from gqa_sweep.bench.figures import dress, new_axes, save
from gqa_sweep.bench.steps import decoder_fn
from gqa_sweep.bench.variants import cases, kind, variant_config
from gqa_sweep.model import kv
from gqa_sweep.model.shape import divisors
from gqa_sweep.train.metrics import free_memory_bytes

# Seed 001's serving table (70B on 4 x A100): MHA 800, GQA-8 3200, MQA 4000 tokens/s at each one's largest batch,
# as ratios to MHA, beside ours at the largest batch that fits this device.
SEED_001_VS_MHA = {"MHA": 1.0, "GQA-8": 4.0, "MQA": 5.0}


def _variants(a: argparse.Namespace) -> bool:
    return getattr(a, "attention", ["gqa"]) != ["gqa"]


def memory_budget(a: argparse.Namespace, env: Env) -> int:
    """--memory in bytes; without it (CUDA) 90 % of the device's free memory: the step's activations, its logits
    and the CUDA graph's pool live in the rest (CPU: the --quick/full default)."""
    if a.memory is not None:
        return kv.parse_bytes(a.memory)
    return int(0.9 * free_memory_bytes(env.device))


def batches(max_batch: int, only_max: bool = False) -> list[int]:
    """1, 2, 4, ... while it fits, then the largest batch that fits: 1, 2, 4, ..., 64, 115 (only_max: 115)."""
    out = [2**i for i in range(max_batch.bit_length()) if 2**i <= max_batch]
    out += [max_batch] if out and out[-1] != max_batch else []
    return out[-1:] if only_max else out


def plan(a: argparse.Namespace, elem: int, memory: int) -> dict:
    """Per G (per (attention, G) with --attention): the model's shape and the largest batch `memory` holds, one
    model resident at a time: all its parameters plus ModelConfig.kv_bytes_per_token x context per sequence (for
    GQA the same as kv.max_batch_size)."""
    out: dict = {}
    H = model_config(a, 1).n_heads
    keys = cases(a) if _variants(a) else [("gqa", G) for G in divisors(H)]
    for att, G in keys:
        cfg = variant_config(a, att, G or H, a.context)
        w, per_seq = all_params(cfg) * elem, cfg.kv_bytes_per_token(elem) * a.context
        out[(att, G) if _variants(a) else G] = cfg, max(memory - w, 0) // per_seq
    if min(b for _, b in out.values()) == 0:
        worst = min(out, key=lambda k: out[k][1])
        raise ValueError(
            f"--memory {memory / 1e9:.3g} GB does not hold the weights plus one sequence of {a.context} tokens at "
            f"{'G=' if isinstance(worst, int) else ''}{worst}; raise --memory or lower --context"
        )
    return out


def bench_serve(a: argparse.Namespace, env: Env) -> tuple[pd.DataFrame, str]:
    """One G at a time (a 7B model's weights are a tenth of the device: one resident), its batches in turn, each
    batch's cache freed before the next; set-up (build, cache fill, graph capture) timed apart from the steps."""
    memory = memory_budget(a, env)
    H = model_config(a, 1).n_heads
    rows = []
    for key, (cfg, max_b) in plan(a, env.elem, memory).items():
        with Stopwatch(env.device) as build:
            model = build_model(cfg, env, a.seed)
        for b in batches(max_b, getattr(a, "batches", "all") == "max"):
            with Stopwatch(env.device) as fill:
                # The cache holds `context` tokens after the last timed step: exactly what the budget counted.
                cache = random_cache(model, b, a.context - a.new_tokens, a.seed)
                first = first_tokens(model.cfg, b, a.seed, env.device)
                fn = decoder_fn(model, cache, first, a.new_tokens, getattr(a, "decode_mode", "auto"))
            for _ in range(a.warmup):
                fn()
            med, lo, hi = (x / a.new_tokens for x in stats([time_call(fn, env.device) for _ in range(a.repeats)]))
            w, nbytes = all_params(cfg) * env.elem, cache.nbytes(a.context)
            rows.append(dict(
                **what(a, key, H), batch=b, context=a.context, max_batch=max_b,
                weight_bytes=w, cache_MiB=nbytes / 2**20, used_GB=(w + nbytes) / 1e9, memory_bytes=memory,
                ms_per_token=med * 1e3, min_ms=lo * 1e3, max_ms=hi * 1e3, tokens_per_s=b / med,
                setup_s=build.seconds * (b == batches(max_b)[0]) + fill.seconds,
            ))  # fmt: skip
            del fn, cache
        del model
    order = ["attention", "G", "batch"] if _variants(a) else ["G", "batch"]
    return at_max_batch(pd.DataFrame(rows).sort_values(order, ignore_index=True)), ""


def what(a: argparse.Namespace, key, H: int) -> dict:
    if not _variants(a):
        return dict(G=key, kind=kv.attention_kind(key, H))
    out = {"attention": key[0], "G": key[1], "kind": kind(*key, H)}
    return out | {"case": out["kind"] + ("" if key[1] is None else f" G={key[1]}")}


def at_max_batch(df: pd.DataFrame) -> pd.DataFrame:
    """At each G's largest batch: tokens/s over MHA's at its own largest batch, beside seed 001's 70B ratios."""
    top = df[df.batch == df.max_batch]
    mha = top[top.kind == "MHA"].tokens_per_s
    label = [f"GQA-{g}" if k == "GQA" else k for k, g in zip(df.kind, df.G)]
    df["max_vs_mha"] = (df.tokens_per_s / mha.iloc[0]).where(df.batch == df.max_batch) if len(mha) else float("nan")
    df["seed001_vs_mha"] = [SEED_001_VS_MHA.get(x, float("nan")) for x in label]
    df.loc[df.batch != df.max_batch, "seed001_vs_mha"] = float("nan")
    return df


def plot_serve(df: pd.DataFrame, title: str) -> Figure:
    """Throughput (tokens/s) against latency (ms per token per sequence), one line per G, batch annotated."""
    fig, ax = new_axes()
    for G, t in df.groupby("case" if "case" in df else "G", sort=False):
        label = G if "case" in df else f"G={G} ({t.kind.iloc[0]})"
        line = ax.plot(t.ms_per_token, t.tokens_per_s, marker="o", label=label)[0]
        for x, y, b in zip(t.ms_per_token, t.tokens_per_s, t.batch):
            if b == t.batch.max() or b in (1, 16):
                ax.annotate(f"B={b}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color=line.get_color())  # fmt: skip
    dress(ax, "latency: ms per token per sequence", "throughput: tokens/s (batch / step time)", title,
          title="KV heads")  # fmt: skip
    return fig


def write_plot(df: pd.DataFrame, env: Env, a: argparse.Namespace, out) -> list:
    cfg = model_config(a, 1)
    title = (
        f"{cfg.n_layers} layers, d_model {cfg.d_model}, H={cfg.n_heads}, d_head {cfg.d_head}, context "
        f"{a.context}, {df.memory_bytes.iloc[0] / 1e9:.3g} GB budget\n"
        f"{env.device_name}, {env.dtype_name}, {env.date[:10]}"
    )
    return save(plot_serve(df, title), out, "serve")


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
