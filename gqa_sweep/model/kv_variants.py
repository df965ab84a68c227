"""`gqa-kv --attention gta|mla`: the cache of grouped-tied and multi-head latent attention beside MHA's.

Elements per token per layer come from gqa_sweep/model/kv_formula.py (GTA G * d_head + d_R, MLA d_c + d_R); the table
has GTA's row per G dividing H, or MLA's one row, each with its "GQA-equivalent G" (elements / (2 d_head):
DeepSeek-V2's 2.25) and the saving against MHA's 2 * H * d_head. Torch-free, as kv.py.
"""

from __future__ import annotations

import math

import pandas as pd

from gqa_sweep.model.kv_formula import divisors, kv_elements_per_layer


def variant_table(attention: str, n_layers: int, n_heads: int, d_head: int, seq_len: int, batch_size: int,
                  bytes_per_element: float, n_kv_heads: int | None = None, rope_dim: int | None = None,
                  kv_lora_rank: int | None = None, memory_bytes: int | None = None,
                  weights_bytes: int = 0) -> pd.DataFrame:  # fmt: skip
    """Rows: G (or "-" for MLA), kind, own, elements_per_layer, gqa_equiv_G, bytes_per_token, kv_bytes, kv_GB,
    kv_GiB, saved_pct (vs MHA), and with memory_bytes max_batch (weights + cache of seq_len per sequence)."""
    rope_dim = d_head // 2 if rope_dim is None else rope_dim
    if attention == "gta" and not 0 < rope_dim < d_head:
        raise ValueError(f"--rope-dim {rope_dim} must be in (0, --head-dim {d_head}) for GTA; e.g. {d_head // 2}")
    if rope_dim % 2:
        raise ValueError(f"--rope-dim {rope_dim} must be even (RoPE rotates pairs); e.g. {d_head // 2}")
    if attention == "mla":
        kv_lora_rank = 4 * d_head if kv_lora_rank is None else kv_lora_rank
        cases = [("-", "MLA", True, kv_elements_per_layer("mla", None, d_head, rope_dim, kv_lora_rank))]
    else:
        cases = [(G, "GTA", G == n_kv_heads, kv_elements_per_layer("gta", G, d_head, rope_dim))
                 for G in divisors(n_heads)]  # fmt: skip
    mha = 2 * n_heads * d_head
    rows = []
    for G, kind, own, elements in cases:
        per_token = math.ceil(elements * n_layers * bytes_per_element)
        total = math.ceil(elements * n_layers * seq_len * batch_size * bytes_per_element)
        row = {"G": G, "kind": kind, "own": own, "elements_per_layer": elements,
               "gqa_equiv_G": elements / (2 * d_head), "bytes_per_token": per_token, "kv_bytes": total,
               "kv_GB": total / 1e9, "kv_GiB": total / 2**30, "saved_pct": 100.0 * (1 - elements / mha)}  # fmt: skip
        if memory_bytes is not None:
            per_sequence = math.ceil(elements * n_layers * seq_len * bytes_per_element)
            row["max_batch"] = max(memory_bytes - weights_bytes, 0) // per_sequence
        rows.append(row)
    return pd.DataFrame(rows)


def display(df: pd.DataFrame, memory_bytes: int | None, human_bytes) -> pd.DataFrame:
    out = pd.DataFrame({
        "G": [f"{g}*" if own and g != "-" else str(g) for g, own in zip(df["G"], df["own"])],
        "kind": df["kind"],
        "elements/layer": df["elements_per_layer"],
        "GQA-equiv. G": [f"{g:.3g}" for g in df["gqa_equiv_G"]],
        "bytes/token": [f"{b:,}" for b in df["bytes_per_token"]],
        "KV cache": [human_bytes(x) for x in df["kv_bytes"]],
        "KV cache (2^10)": [human_bytes(x, binary=True) for x in df["kv_bytes"]],
        "saved vs MHA": [f"{x:.2f}%" for x in df["saved_pct"]],
    })  # fmt: skip
    if memory_bytes is not None:
        out[f"max batch in {human_bytes(memory_bytes)}"] = df["max_batch"]
    return out
