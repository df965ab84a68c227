"""`gqa-bench decode`: KV-cached decode per G, side by side: ours folded, ours unfolded, HF Llama.

All three decode greedily from the same cache contents (random K/V for `context` tokens: per-token cost does
not depend on the values, and skipping the prefill keeps a CPU run short) with the same weights, one
single-token forward per step, `new_tokens` steps per timed call. HF runs `LlamaForCausalLM` (SDPA) with its own
`DynamicCache`, whose per-step `torch.cat` of the whole cache is part of what it costs. Beside the models, the
single-token attention call is timed alone (folded vs enable_gqa) to show which part scales with G.
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
    copy_bandwidth,
    interleaved,
    model_config,
    peak_bandwidth,
    profile_table,
    stats,
    weight_bytes,
)
from gqa_sweep.bench.variants import bench_decode_variants, measured_bytes_per_token
from gqa_sweep.model.attention import KVCache
from gqa_sweep.model.shape import ModelConfig, divisors
from gqa_sweep.model.transformer import DecoderLM

IMPLS = ("folded", "unfolded", "hf")


def cache_bytes(cfg: ModelConfig, batch: int, ctx: int, bytes_per_element: int) -> int:
    """KV cache of `ctx` tokens for `batch` sequences: 2 * G * d_head * L * ctx * B * bytes."""
    return cfg.kv_bytes_per_token(bytes_per_element) * ctx * batch


def random_cache(model: DecoderLM, batch: int, ctx: int, seed: int) -> KVCache:
    """A cache of the model's dtype and device holding `ctx` tokens of random K/V."""
    cache = model.new_cache(batch)
    g = torch.Generator().manual_seed(seed)
    for buf in cache.k + cache.v:
        buf[:, :, :ctx] = torch.randn(buf[:, :, :ctx].shape, generator=g).to(buf)
    cache.length = ctx
    return cache


def first_tokens(cfg: ModelConfig, batch: int, seed: int, device) -> torch.Tensor:
    return torch.randint(cfg.vocab_size, (batch, 1), generator=torch.Generator().manual_seed(seed)).to(device)


def decode_fn(
    model: DecoderLM, cache: KVCache, first: torch.Tensor, new_tokens: int, fold: bool | None = None
) -> Callable[[], torch.Tensor]:
    """Greedy decode of `new_tokens` tokens (B, new_tokens) from `cache` as it is now; every call restarts there."""
    ctx = cache.length

    @torch.no_grad()
    def run() -> torch.Tensor:
        model.set_fold_decode(fold)  # folded and unfolded share one model and cache
        cache.length = ctx
        toks = [first]
        for _ in range(new_tokens):
            toks.append(model(toks[-1], cache)[:, -1].argmax(dim=-1, keepdim=True))
        return torch.cat(toks[1:], dim=1)

    run.cache = cache  # keeps the buffers alive and inspectable
    return run


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
    """The same weights as `transformers.LlamaForCausalLM`, SDPA attention, in eval mode."""
    from gqa_sweep.hf.export import to_hf

    hf = to_hf(model)
    hf.set_attn_implementation("sdpa")
    return hf.to(model.embed.weight.device, model.embed.weight.dtype).eval()


def bench_decode(a: argparse.Namespace, env: Env) -> tuple[pd.DataFrame, str]:
    if getattr(a, "attention", ["gqa"]) != ["gqa"]:  # --attention gqa gta mla: one row per type and G
        return bench_decode_variants(a, env)
    block = max(a.context) + a.new_tokens
    copy_bw = copy_bandwidth(env.device)
    rows, prof = [], ""
    # One context at a time (bounded memory); within it every G and implementation is interleaved.
    for ctx in a.context:
        fns: dict[tuple, Callable] = {}
        models: dict[int, DecoderLM] = {}
        for G in divisors(model_config(a, 1).n_heads):
            torch.manual_seed(a.seed)
            model = models[G] = DecoderLM(model_config(a, G, block)).to(env.device, env.dtype).eval()
            cache = random_cache(model, a.batch, ctx, a.seed)
            measured_bytes_per_token(model, cache, ctx)  # the buffers hold exactly the formula's bytes
            first = first_tokens(model.cfg, a.batch, a.seed, env.device)
            fns[("folded", G)] = decode_fn(model, cache, first, a.new_tokens, fold=True)
            fns[("unfolded", G)] = decode_fn(model, cache, first, a.new_tokens, fold=False)
            fns[("hf", G)] = hf_decode_fn(hf_copy(model), cache, first, a.new_tokens)
            cfg = model.cfg
            attn = decode_attention_fns(a.batch, cfg.n_heads, G, ctx, cfg.d_head, env, a.seed)
            fns |= {(f"attn_{k}", G): fn for k, fn in attn.items()}
        t = {k: stats(v) for k, v in interleaved(fns, env.device, a.warmup, a.repeats).items()}
        for G, model in models.items():
            kv, w = cache_bytes(model.cfg, a.batch, ctx, env.elem), weight_bytes(model, env.elem)
            row = dict(G=G, context=ctx, batch=a.batch, cache_MiB=kv / 2**20, weight_MiB=w / 2**20,
                       bytes_per_token=(kv + w) / a.batch)  # fmt: skip
            for impl in IMPLS:
                step = t[(impl, G)][0] / a.new_tokens  # one step = one new token for every sequence
                row |= {f"{impl}_ms_per_token": step * 1e3, f"{impl}_tok_s": a.batch / step,
                        f"{impl}_GBps": (kv + w) / step / 1e9}  # fmt: skip
            row |= dict(
                folded_over_unfolded=row["folded_tok_s"] / row["unfolded_tok_s"],
                folded_over_hf=row["folded_tok_s"] / row["hf_tok_s"],
                copy_GBps=copy_bw / 1e9, folded_frac_of_copy=row["folded_GBps"] * 1e9 / copy_bw,
                folded_hbm_frac=row["folded_GBps"] * 1e9 / peak_bandwidth(env.device_name),
                attn_folded_ms=t[("attn_folded", G)][0] * 1e3, attn_enable_gqa_ms=t[("attn_enable_gqa", G)][0] * 1e3,
                attn_hot_ms=t[("attn_folded_hot", G)][0] * 1e3,
            )  # fmt: skip
            row["attn_hot_frac"] = row["attn_hot_ms"] / row["attn_folded_ms"]
            rows.append(row)
        if a.profile and ctx == max(a.context):
            H = max(models)
            prof = profile_table({f"{impl} G={G}": fns[(impl, G)] for G in (1, H) for impl in IMPLS}, env.device)
        del fns, models
    df = pd.DataFrame(rows)
    # Relative to MHA at the same context: the decode speed-up fewer KV heads buy, and attention time per G.
    mha = df.groupby("context")["G"].transform("max")
    at_mha = df[df.G == mha].set_index("context")
    df["folded_vs_mha"] = df.folded_tok_s / df.context.map(at_mha.folded_tok_s)
    df["attn_vs_proportional"] = df.attn_folded_ms / (df.context.map(at_mha.attn_folded_ms) * df.G / mha)
    return df, prof
