"""`gqa-bench decode|serve --attention gqa gta mla`: one row per attention type and G, side by side.

Every case decodes greedily from a cache of `context` random tokens (drawn on the device) with our own
single-token step (GQA and GTA folded on the CPU, MLA absorbed; graph-replayed on CUDA, --decode-mode), so what
differs is what a step reads: the cache (measured from the cache's own buffers and checked against the formula of
gqa_sweep/model/kv_formula.py) plus the weights. Beside the measured tokens/s, `ai_model` is the GLA paper's
arithmetic-intensity model of decode attention (arXiv 2505.21487, Table 1: FLOPs per byte of cache read): GQA H/G
(MHA 1, MQA H), GTA 2H/G, MLA 2H.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import pandas as pd

from gqa_sweep.bench.common import (
    Env,
    Stopwatch,
    build_model,
    first_tokens,
    interleaved,
    model_config,
    random_cache,
    stats,
    weight_bytes,
)
from gqa_sweep.bench.steps import decoder_fn
from gqa_sweep.model.kv_formula import attention_type
from gqa_sweep.model.shape import ModelConfig, divisors
from gqa_sweep.model.transformer import DecoderLM


def variant_config(a: argparse.Namespace, attention: str, G: int, block: int) -> ModelConfig:
    """The preset's shape with this attention type (MLA's G is ignored: it has none)."""
    knobs = {k: getattr(a, k, None) for k in attention_type(attention).knobs}  # None: the knob's default
    return replace(model_config(a, G, block), attention=attention, **knobs)


def cases(a: argparse.Namespace) -> list[tuple[str, int | None]]:
    """(attention, G) per row: every G dividing H for GQA and GTA, one row for MLA (no G)."""
    H = model_config(a, 1).n_heads
    return [(att, G) for att in a.attention for G in (divisors(H) if attention_type(att).grouped else [None])]


def kind(attention: str, G: int | None, H: int) -> str:
    if attention == "gqa":
        return "MHA" if G == H else "MQA" if G == 1 else "GQA"
    return attention.upper()


def ai_model(attention: str, G: int | None, H: int) -> float:
    """Decode attention's arithmetic intensity per the GLA paper: GQA H/G, GTA 2H/G, MLA 2H."""
    return {"gqa": lambda: H / G, "gta": lambda: 2 * H / G, "mla": lambda: 2 * H}[attention]()


def measured_bytes_per_token(model: DecoderLM, cache, ctx: int) -> int:
    """Bytes the cache's own buffers hold per token per sequence; must equal the config's formula."""
    measured = cache.nbytes(ctx) // (ctx * cache.batch_size)
    formula = model.cfg.kv_bytes_per_token(cache.buffers()[0].element_size())
    if measured != formula:
        raise RuntimeError(f"{model.cfg.attention} cache holds {measured} B/token but the formula says {formula}")
    return measured


def bench_decode_variants(a: argparse.Namespace, env: Env) -> tuple[pd.DataFrame, str]:
    H = model_config(a, 1).n_heads
    rows = []
    for ctx in a.context:
        fns, models, setup = {}, {}, {}
        for att, G in cases(a):
            with Stopwatch(env.device) as watch:  # build + cache fill (+ graph capture), apart from the steps
                model = models[(att, G)] = build_model(variant_config(a, att, G or H, ctx + a.new_tokens), env, a.seed)
                cache = random_cache(model, a.batch, ctx, a.seed)
                first = first_tokens(model.cfg, a.batch, a.seed, env.device)
                fns[(att, G)] = decoder_fn(model, cache, first, a.new_tokens, getattr(a, "decode_mode", "auto"))
            setup[(att, G)] = watch.seconds
        t = {k: stats(v) for k, v in interleaved(fns, env.device, a.warmup, a.repeats).items()}
        for (att, G), model in models.items():
            per_token = measured_bytes_per_token(model, fns[(att, G)].cache, ctx)
            kv, w = per_token * ctx * a.batch, weight_bytes(model, env.elem)
            step = t[(att, G)][0] / a.new_tokens
            rows.append({
                "attention": att, "G": G, "kind": kind(att, G, H), "context": ctx, "batch": a.batch,
                "cache_bytes_per_token": per_token, "cache_MiB": kv / 2**20, "weight_MiB": w / 2**20,
                "bytes_per_token": (kv + w) / a.batch, "ms_per_token": step * 1e3, "tok_s": a.batch / step,
                "GBps": (kv + w) / step / 1e9, "ai_model": ai_model(att, G, H), "setup_s": setup[(att, G)],
            })  # fmt: skip
        del fns, models
    df = pd.DataFrame(rows)
    mha = df[df.kind == "MHA"].set_index("context")
    if not mha.empty:
        df["tok_s_vs_mha"] = df.tok_s / df.context.map(mha.tok_s)
        df["cache_vs_mha"] = df.cache_bytes_per_token / df.context.map(mha.cache_bytes_per_token)
    return df, ""


NOTE = (
    "--attention rows: one greedy decoder per attention type and G, same preset shape, random cache of `context` "
    "tokens, our single-token step (GQA and GTA folded, MLA absorbed; graph-replayed on CUDA); "
    "cache_bytes_per_token = bytes the cache's buffers hold per token per sequence (checked equal to "
    "ModelConfig.kv_bytes_per_token); bytes_per_token = (cache + matmul weights) / batch read per step; tok_s = "
    "batch / median step; setup_s = build + cache fill (+ graph capture), not in the steps; ai_model = the GLA "
    "paper's arithmetic intensity of decode attention (GQA H/G, GTA 2H/G, MLA 2H), a model, not measured."
)
