"""`gqa-bench attention`: causal SDPA forward+backward, grouped (enable_gqa) vs a repeat-KV reference; and the
single-token decode attention call, folded vs enable_gqa, that `gqa-bench decode` times beside the model."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from gqa_sweep.bench.common import Env, generator, interleaved, peak_memory, profile_table, randn, stats
from gqa_sweep.model.shape import divisors


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """The reference: K/V copied to H heads (HF `repeat_kv` semantics: a no-op at n_rep=1)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def attention_inputs(batch: int, seq: int, heads: int, groups: int, d_head: int, env: Env, seed: int):
    g = generator(env.device, seed)
    shape = lambda h: (batch, h, seq, d_head)  # noqa: E731
    q, k, v = (randn(shape(h), g, env.dtype).requires_grad_() for h in (heads, groups, groups))
    return q, k, v, randn(shape(heads), g, env.dtype)


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


def decode_attention_fns(
    batch: int, heads: int, groups: int, ctx: int, d_head: int, env: Env, seed: int
) -> dict[str, Callable[[], torch.Tensor]]:
    """One decode step's attention (one query token against `ctx` cached tokens of G heads), both ways.

    K/V are views of a longer (B, G, ctx + 1, d) buffer, as the model's cache is. "folded" is the model's
    CPU decode call: q viewed as (B, G, H/G, d), no mask; "enable_gqa" is SDPA's own grouping; "folded_hot" is the
    folded call's arithmetic alone (its K/V stay cache-resident where one sequence's K/V fit in the CPU cache).
    """
    g = generator(env.device, seed)
    q = randn((batch, heads, 1, d_head), g, env.dtype)
    k, v = (randn((batch, groups, ctx + 1, d_head), g, env.dtype)[:, :, :ctx] for _ in "kv")
    qf = q.view(batch, groups, heads // groups, d_head)

    def folded_hot() -> torch.Tensor:
        # The same work one sequence at a time, `batch` times over the same sequence: after the first call its
        # K/V sit in the CPU cache, so this times the arithmetic (QK^T, softmax, PV over H heads) and little else.
        for _ in range(batch):
            y = F.scaled_dot_product_attention(qf[:1], k[:1], v[:1])
        return y

    return {
        "folded": lambda: F.scaled_dot_product_attention(qf, k, v),
        "enable_gqa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        "folded_hot": folded_hot,
    }
