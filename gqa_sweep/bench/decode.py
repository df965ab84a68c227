"""`gqa-bench decode`: KV-cached decode per G, side by side: ours graph-replayed (CUDA), folded, unfolded, HF Llama.

All decode greedily from the same cache contents (random K/V for `context` tokens, drawn on the device: per-token
cost does not depend on the values, and skipping the prefill keeps set-up short) with the same weights, one
single-token forward per step, `new_tokens` steps per timed call. "graph" is the static-cache step captured in a
CUDA graph (gqa_sweep/model/decode.py; --decode-mode auto|graph on CUDA); folded / unfolded are our eager step
with and without the query heads folded per group; HF runs `LlamaForCausalLM` (SDPA) with its own
`DynamicCache`, whose per-step `torch.cat` of the whole cache is part of what it costs. Beside the models, the
single-token attention call is timed alone (folded vs enable_gqa) to show which part scales with G.

Every model and cache is born on the device (bench.common.build_model / random_cache); set-up (build, cache fill,
graph capture) is timed apart from the steps (`setup_s`). When every G's models and caches fit the device's free
memory together, all G are timed interleaved; otherwise one G at a time (a 7B layer shape at 8k x 16).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable

import pandas as pd
import torch

from gqa_sweep.bench.attention import decode_attention_fns
from gqa_sweep.bench.common import (
    Env,
    Stopwatch,
    all_params,
    build_model,
    copy_bandwidth,
    first_tokens,
    interleaved,
    model_config,
    peak_bandwidth,
    profile_table,
    random_cache,
    stats,
    weight_bytes,
)
from gqa_sweep.bench.steps import decode_fn, static_fn
from gqa_sweep.bench.variants import bench_decode_variants, measured_bytes_per_token
from gqa_sweep.model.cache import KVCache
from gqa_sweep.model.decode import resolve_mode
from gqa_sweep.model.shape import divisors
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.metrics import free_memory_bytes

EAGER_IMPLS = ("folded", "unfolded", "hf")


def impls(a: argparse.Namespace, env: Env) -> tuple[str, ...]:
    graph = resolve_mode(getattr(a, "decode_mode", "auto"), env.device) == "graph"
    return (("graph",) if graph else ()) + EAGER_IMPLS


def hf_decode_fn(hf, cache: KVCache, first: torch.Tensor, new_tokens: int) -> Callable[[], torch.Tensor]:
    """The same greedy decode through HF `LlamaForCausalLM` with a `DynamicCache` holding a copy of `cache`."""
    from transformers import DynamicCache

    ctx = cache.length
    hf_cache = DynamicCache(config=hf.config)
    for i, (k, v) in enumerate(zip(cache.k, cache.v)):
        hf_cache.update(k[:, :, :ctx].clone(), v[:, :, :ctx].clone(), i)

    # transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name warns, and goes in 5.40);
    # 4.x knows only the old name.
    cache_kw = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

    @torch.no_grad()
    def run() -> torch.Tensor:
        toks = [first]
        for _ in range(new_tokens):
            logits = hf(input_ids=toks[-1], use_cache=True, **{cache_kw: hf_cache}).logits
            toks.append(logits[:, -1].argmax(dim=-1, keepdim=True))
        for layer in hf_cache.layers:  # back to `ctx` tokens: a view, no copy
            layer.crop(-new_tokens)
        return torch.cat(toks[1:], dim=1)

    run.cache = hf_cache
    return run


def hf_copy(model: DecoderLM):
    """The same weights as `transformers.LlamaForCausalLM`, SDPA attention, in eval mode, built on the model's
    device in its dtype (the device context places HF's parameters and their init there, never on the host)."""
    from gqa_sweep.hf.export import to_hf

    with torch.device(model.embed.weight.device):
        hf = to_hf(model)
    hf.set_attn_implementation("sdpa")
    return hf.eval()


def g_groups(a: argparse.Namespace, env: Env, ctx: int) -> list[list[int]]:
    """Every G timed together when all their models (ours + HF) and caches (ours, HF's copy and its per-step
    `torch.cat`) fit in 90 % of the free memory, else one G at a time."""
    block = ctx + a.new_tokens
    Gs = divisors(model_config(a, 1).n_heads)
    cfgs = [model_config(a, G, block) for G in Gs]
    need = sum(2 * all_params(c) * env.elem + 3 * c.kv_bytes_per_token(env.elem) * block * a.batch for c in cfgs)
    return [Gs] if need < 0.9 * free_memory_bytes(env.device) else [[G] for G in Gs]


def bench_decode(a: argparse.Namespace, env: Env) -> tuple[pd.DataFrame, str]:
    if getattr(a, "attention", ["gqa"]) != ["gqa"]:  # --attention gqa gta mla: one row per type and G
        return bench_decode_variants(a, env)
    names = impls(a, env)
    copy_bw = copy_bandwidth(env.device)
    rows, prof = [], ""
    for ctx in a.context:  # one context at a time (bounded memory)
        for group in g_groups(a, env, ctx):  # within a group, every G and implementation is interleaved
            fns: dict[tuple, Callable] = {}
            models: dict[int, DecoderLM] = {}
            setup: dict[int, float] = {}
            for G in group:
                with Stopwatch(env.device) as watch:  # build + cache fill (+ graph capture): apart from the steps
                    model = models[G] = build_model(model_config(a, G, ctx + a.new_tokens), env, a.seed)
                    cache = random_cache(model, a.batch, ctx, a.seed)
                    measured_bytes_per_token(model, cache, ctx)  # the buffers hold exactly the formula's bytes
                    first = first_tokens(model.cfg, a.batch, a.seed, env.device)
                    if "graph" in names:
                        fns[("graph", G)] = static_fn(model, cache, first, a.new_tokens)
                    fns[("folded", G)] = decode_fn(model, cache, first, a.new_tokens, fold=True)
                    fns[("unfolded", G)] = decode_fn(model, cache, first, a.new_tokens, fold=False)
                    fns[("hf", G)] = hf_decode_fn(hf_copy(model), cache, first, a.new_tokens)
                    cfg = model.cfg
                    attn = decode_attention_fns(a.batch, cfg.n_heads, G, ctx, cfg.d_head, env, a.seed)
                    fns |= {(f"attn_{k}", G): fn for k, fn in attn.items()}
                setup[G] = watch.seconds
            t = {k: stats(v) for k, v in interleaved(fns, env.device, a.warmup, a.repeats).items()}
            for G, model in models.items():
                rows.append(row(a, env, ctx, model, t, names, copy_bw) | {"setup_s": setup[G]})
                r = rows[-1]  # as each row is measured: a long run shows progress before its table
                print(f"context {ctx} G={G}: {r[f'{names[0]}_ms_per_token']:.3g} ms/step {names[0]}, "
                      f"{r[f'{names[0]}_GBps']:.4g} GB/s; set-up {r['setup_s']:.3g} s", flush=True)  # fmt: skip
            pick = [G for G in group if G in (1, model_config(a, 1).n_heads)]  # MQA and MHA
            if a.profile and ctx == max(a.context) and pick:
                prof += profile_table({f"{impl} G={G}": fns[(impl, G)] for G in pick for impl in names}, env.device)
            del fns, models
    return relative_to_mha(pd.DataFrame(rows), names[0]), prof


def row(a, env: Env, ctx: int, model: DecoderLM, t: dict, names: tuple[str, ...], copy_bw: float) -> dict:
    G = model.cfg.n_kv_heads
    kv, w = model.cfg.kv_bytes_per_token(env.elem) * ctx * a.batch, weight_bytes(model, env.elem)
    out = dict(G=G, context=ctx, batch=a.batch, cache_MiB=kv / 2**20, weight_MiB=w / 2**20,
               bytes_per_step=kv + w, bytes_per_token=(kv + w) / a.batch)  # fmt: skip
    for impl in names:
        step = t[(impl, G)][0] / a.new_tokens  # one step = one new token for every sequence
        out |= {f"{impl}_ms_per_token": step * 1e3, f"{impl}_tok_s": a.batch / step,
                f"{impl}_GBps": (kv + w) / step / 1e9}  # fmt: skip
    best = names[0]  # graph on CUDA, else folded: the decode the row's bandwidth and ratios are about
    return out | dict(
        decode_impl=best,
        folded_over_unfolded=out["folded_tok_s"] / out["unfolded_tok_s"],
        folded_over_hf=out["folded_tok_s"] / out["hf_tok_s"],
        copy_GBps=copy_bw / 1e9, frac_of_copy=out[f"{best}_GBps"] * 1e9 / copy_bw,
        hbm_frac=out[f"{best}_GBps"] * 1e9 / peak_bandwidth(env.device_name),
        attn_folded_ms=t[("attn_folded", G)][0] * 1e3, attn_enable_gqa_ms=t[("attn_enable_gqa", G)][0] * 1e3,
        attn_hot_ms=t[("attn_folded_hot", G)][0] * 1e3,
        attn_hot_frac=t[("attn_folded_hot", G)][0] / t[("attn_folded", G)][0],
    )  # fmt: skip


def relative_to_mha(df: pd.DataFrame, best: str) -> pd.DataFrame:
    """Per context, against MHA (G = H): the speed-up fewer KV heads buy (vs_mha), the ideal one if a step only
    streamed its bytes (ideal_vs_mha = MHA's bytes per step / this G's), their ratio, and attention time per G."""
    mha = df.groupby("context")["G"].transform("max")
    at_mha = df[df.G == mha].set_index("context")
    df["vs_mha"] = df[f"{best}_tok_s"] / df.context.map(at_mha[f"{best}_tok_s"])
    df["ideal_vs_mha"] = df.context.map(at_mha.bytes_per_step) / df.bytes_per_step
    df["vs_ideal"] = df.vs_mha / df.ideal_vs_mha
    df["attn_vs_proportional"] = df.attn_folded_ms / (df.context.map(at_mha.attn_folded_ms) * df.G / mha)
    return df
