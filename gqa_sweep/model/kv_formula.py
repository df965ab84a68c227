"""Elements one token caches in one layer, per attention type: the single formula behind every KV byte count.

    gqa (MHA at G = H, MQA at G = 1):  2 * G * d_head          K and V of G heads
    gta (grouped-tied, arXiv 2505.21487 §3.3.1):  G * d_head + d_R   one tied K/V state per group + one RoPE key
    mla (DeepSeek-V2 §2.1):  d_c + d_R                           the normalised latent + the shared RoPE key

Imports nothing (neither torch nor the package), so `gqa-kv` and the config checks use it for free.
"""

from __future__ import annotations

ATTENTIONS = ("gqa", "gta", "mla")
# Bytes per cached element. int4 packs two values per byte.
DTYPE_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


def kv_elements_per_layer(attention: str, n_kv_heads: int | None, d_head: int, rope_dim: int | None = None,
                          kv_lora_rank: int | None = None) -> int:  # fmt: skip
    """Cached elements per token in one layer (multiply by bytes per element and sum over layers)."""
    if attention == "gqa":
        return 2 * n_kv_heads * d_head
    if attention == "gta":
        return n_kv_heads * d_head + rope_dim
    if attention == "mla":
        return kv_lora_rank + rope_dim
    raise ValueError(f"attention={attention!r}; choose from {', '.join(ATTENTIONS)}")
