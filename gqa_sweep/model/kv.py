"""KV-cache memory of grouped-query attention: size formula, model presets, max batch under a budget.

A decoder with G KV heads of size d_head caches K and V for every layer and token:
    bytes = 2 * G * d_head * n_layers * seq_len * batch_size * bytes_per_element.
`kv_table` evaluates it for every G dividing H (MQA ... MHA); `gqa-kv` (kv_cli.py) prints that table.
Torch-free, so the CLI starts instantly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from gqa_sweep.model.kv_formula import DTYPE_BYTES, divisors, kv_elements_per_layer

_DECIMAL_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BINARY_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
BYTE_UNITS: dict[str, int] = {**_DECIMAL_UNITS, **_BINARY_UNITS}


@dataclass(frozen=True)
class Preset:
    """Attention shape of a public model, from its Hugging Face config.json."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int | list[int]  # a list: one G per layer (a custom shape only)
    d_head: int
    d_model: int
    n_params: int  # total parameters, embeddings and untied LM head included
    source: str  # Hugging Face repository whose config.json the numbers come from

    def weight_bytes(self, dtype: str) -> int:
        return math.ceil(self.n_params * dtype_bytes(dtype))


# n_params: exact counts from the config shapes (vocab, hidden, intermediate, layers, heads, biases),
# matching the safetensors totals the Hub reports.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("llama2-70b", 80, 64, 8, 128, 8192, 68_976_648_192, "meta-llama/Llama-2-70b-hf"),
        Preset("llama3-8b", 32, 32, 8, 128, 4096, 8_030_261_248, "meta-llama/Meta-Llama-3-8B"),
        Preset("llama3-70b", 80, 64, 8, 128, 8192, 70_553_706_496, "meta-llama/Meta-Llama-3-70B"),
        Preset("mistral-7b", 32, 32, 8, 128, 4096, 7_241_732_096, "mistralai/Mistral-7B-v0.1"),
        Preset("qwen2.5-72b", 80, 64, 8, 128, 8192, 72_706_203_648, "Qwen/Qwen2.5-72B"),
        # The Falcon-40B model card says "multiquery", but its config.json has
        # new_decoder_architecture=true, num_kv_heads=8: 8 KV groups over 128 query heads (the
        # Falcon paper's "multigroup" attention), i.e. GQA with G=8. Falcon-7B is the MQA one.
        Preset("falcon-40b", 60, 128, 8, 64, 8192, 41_835_970_560, "tiiuae/falcon-40b"),
    )
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of a cache dtype name; ValueError naming the valid names."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def kv_cache_bytes(
    n_kv_heads: int, d_head: int, n_layers: int, seq_len: int, batch_size: int, bytes_per_element: float
) -> int:
    """K and V cache size in bytes: 2 * G * d_head * n_layers * seq_len * batch_size * bytes_per_element.

    Sub-byte dtypes (int4) round up to whole bytes.
    """
    _check_positive(n_kv_heads=n_kv_heads, d_head=d_head, n_layers=n_layers, seq_len=seq_len, batch_size=batch_size)
    if bytes_per_element <= 0:
        raise ValueError(f"bytes_per_element must be positive, got {bytes_per_element!r}")
    elements = kv_elements_per_layer("gqa", n_kv_heads, d_head) * n_layers * seq_len * batch_size
    return math.ceil(elements * bytes_per_element)


def max_batch_size(
    memory_bytes: int, weights_bytes: int, n_kv_heads: int, d_head: int, n_layers: int, seq_len: int,
    bytes_per_element: float,
) -> int:
    """Largest batch whose KV cache at seq_len plus the weights fits in memory_bytes (0 if none)."""
    per_sequence = kv_cache_bytes(n_kv_heads, d_head, n_layers, seq_len, 1, bytes_per_element)
    return max(memory_bytes - weights_bytes, 0) // per_sequence


def attention_kind(n_kv_heads: int, n_heads: int) -> str:
    """MHA when every query head has its own KV head (checked first, so H=1 is MHA), MQA for one KV head."""
    if n_kv_heads == n_heads:
        return "MHA"
    return "MQA" if n_kv_heads == 1 else "GQA"


def kv_table(
    n_layers: int,
    n_heads: int,
    d_head: int,
    seq_len: int,
    batch_size: int,
    dtype: str = "fp16",
    n_kv_heads: int | None = None,
    memory_bytes: int | None = None,
    weights_bytes: int = 0,
    layout: list[int] | None = None,
) -> pd.DataFrame:
    """One row per G dividing n_heads: KV-cache size at (seq_len, batch_size) and the saving vs MHA; with
    `layout` (one G per layer) a last row for that per-layer model, G = "4,2,1,1", own = True.

    Columns: G, group_size (H/G), kind, own (G == n_kv_heads, the model's own choice), bytes_per_token,
    kv_bytes, kv_GB (10^9), kv_GiB (2^30), saved_pct (vs G=H); with memory_bytes also max_batch, the
    largest batch at seq_len whose cache plus weights_bytes fits.
    """
    _check_positive(n_layers=n_layers, n_heads=n_heads, d_head=d_head, seq_len=seq_len, batch_size=batch_size)
    if n_kv_heads is not None and (n_kv_heads < 1 or n_heads % n_kv_heads):
        raise ValueError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}; "
                         f"choose one of: {', '.join(map(str, divisors(n_heads)))}")
    nbytes = dtype_bytes(dtype)
    rows = []
    for g in divisors(n_heads):
        total = kv_cache_bytes(g, d_head, n_layers, seq_len, batch_size, nbytes)
        row = {
            "G": g,
            "group_size": n_heads // g,
            "kind": attention_kind(g, n_heads),
            "own": g == n_kv_heads,
            "bytes_per_token": kv_cache_bytes(g, d_head, n_layers, 1, 1, nbytes),
            "kv_bytes": total,
            "kv_GB": total / 1e9,
            "kv_GiB": total / 2**30,
            "saved_pct": 100.0 * (1 - g / n_heads),
        }
        if memory_bytes is not None:
            row["max_batch"] = max_batch_size(memory_bytes, weights_bytes, g, d_head, n_layers, seq_len, nbytes)
        rows.append(row)
    if layout is not None:
        rows.append(_layout_row(layout, n_layers, n_heads, d_head, seq_len, batch_size, nbytes, memory_bytes,
                                weights_bytes))  # fmt: skip
    return pd.DataFrame(rows)


def _layout_row(layout: list[int], n_layers: int, n_heads: int, d_head: int, seq_len: int, batch_size: int,
                nbytes: float, memory_bytes: int | None, weights_bytes: int) -> dict:  # fmt: skip
    """A per-layer model caches sum_l G_l heads per token: the formula with G * n_layers -> sum_l G_l."""
    if len(layout) != n_layers or any(g < 1 or n_heads % g for g in layout):
        raise ValueError(f"layout={layout} must give one divisor of n_heads={n_heads} per layer ({n_layers} layers)")
    heads = sum(layout)
    total = kv_cache_bytes(heads, d_head, 1, seq_len, batch_size, nbytes)
    row = {
        "G": ",".join(map(str, layout)), "group_size": "per layer", "kind": "per-layer", "own": True,
        "bytes_per_token": kv_cache_bytes(heads, d_head, 1, 1, 1, nbytes), "kv_bytes": total,
        "kv_GB": total / 1e9, "kv_GiB": total / 2**30, "saved_pct": 100.0 * (1 - heads / (n_heads * n_layers)),
    }
    if memory_bytes is not None:
        row["max_batch"] = max_batch_size(memory_bytes, weights_bytes, heads, d_head, 1, seq_len, nbytes)
    return row


def parse_bytes(text: str) -> int:
    """'80GB' -> 80e9, '80GiB' -> 80 * 2^30, '141e9' -> 141e9 (decimal units are powers of 1000)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if unit not in BYTE_UNITS or not math.isfinite(float(m.group(1))):
        raise ValueError(f"cannot parse {text!r} as a byte count; write e.g. 80GB, 80GiB, 141e9 "
                         f"(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    return int(float(m.group(1)) * BYTE_UNITS[unit])


def human_bytes(nbytes: float, binary: bool = False) -> str:
    """A byte count in the largest unit it reaches (512 B, 1.05 MB, 34.36 GB; binary: 32.00 GiB), so a
    small model's cache is not printed as 0.00 GB."""
    base, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("B", "KB", "MB", "GB", "TB"))
    power = 0
    while power < len(units) - 1 and abs(nbytes) >= base ** (power + 1):
        power += 1
    return f"{nbytes:,.0f} B" if power == 0 else f"{nbytes / base**power:.2f} {units[power]}"
