"""The attention types, one registry: per type its own config knobs, what one token caches in one layer, the
attention parameters of one layer, and the names of the module and cache that implement it.

    gqa (MHA at G = H, MQA at G = 1):  2 * G * d_head          K and V of G heads
    gta (grouped-tied, arXiv 2505.21487 §3.3.1):  G * d_head + d_R   one tied K/V state per group + one RoPE key
    mla (DeepSeek-V2 §2.1):  d_c + d_R                           the normalised latent + the shared RoPE key

Every KV byte count (ModelConfig.kv_bytes_per_token, gqa-kv, the benches, the report) multiplies these
elements by bytes per element (DTYPE_BYTES) and layers. Imports nothing (neither torch nor the package), so
`gqa-kv` and the config checks use it for free; gqa_sweep/model/attention.py and cache.py look the classes up
by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Bytes per cached element. int4 packs two values per byte.
DTYPE_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}

MLA_KNOBS = ("rope_dim", "kv_lora_rank", "q_lora_rank", "qk_nope_dim", "v_dim")


def divisors(n: int) -> list[int]:
    """The G a model of n heads can take, in increasing order (1 = MQA ... n = MHA)."""
    return [d for d in range(1, n + 1) if n % d == 0]


def _gqa_params(c, G: int) -> int:  # q, o + K/V of G heads (+ two d_head gains with qk_norm)
    return 2 * c.n_heads * c.d_head * c.d_model + (2 * c.d_head if c.qk_norm else 0) + 2 * G * c.d_head * c.d_model


def _gta_params(c, G: int) -> int:  # q, o + one tied state of G heads + the single-head RoPE key
    return 2 * c.n_heads * c.d_head * c.d_model + c.rope_dim * c.d_model + G * c.d_head * c.d_model


def _mla_params(c, G: int) -> int:  # q (plain or through its normalised latent), KV latent + k_R, its norm, W_UK/UV, o
    d, H, dn, dr, dc, dv, rq = c.d_model, c.n_heads, c.qk_nope_dim, c.rope_dim, c.kv_lora_rank, c.v_dim, c.q_lora_rank
    q = H * (dn + dr) * d if rq is None else d * rq + rq + rq * H * (dn + dr)
    return q + d * (dc + dr) + dc + dc * H * (dn + dv) + H * dv * d


@dataclass(frozen=True)
class AttentionType:
    name: str
    knobs: tuple[str, ...]  # the ModelConfig fields only this type may set
    cached: Callable[[int | None, int, int | None, int | None], int]  # (G, d_head, d_R, d_c) -> elements/token/layer
    layer_params: Callable[..., int]  # (shape, G of the layer) -> attention parameters of one layer
    module: str  # class name in gqa_sweep/model/attention.py
    cache: str  # class name in gqa_sweep/model/cache.py
    grouped: bool = True  # caches per KV group, so it has a G; MLA caches one latent per token and has none


ATTENTION_TYPES: dict[str, AttentionType] = {
    t.name: t
    for t in (
        AttentionType("gqa", (), lambda G, D, dr, dc: 2 * G * D, _gqa_params, "GQAAttention", "KVCache"),
        AttentionType("gta", ("rope_dim",), lambda G, D, dr, dc: G * D + dr, _gta_params, "GTAAttention",
                      "TiedCache"),
        AttentionType("mla", MLA_KNOBS, lambda G, D, dr, dc: dc + dr, _mla_params, "MLAAttention", "LatentCache",
                      grouped=False),
    )
}
ATTENTIONS = tuple(ATTENTION_TYPES)


def attention_type(name: str) -> AttentionType:
    if name not in ATTENTION_TYPES:
        raise ValueError(f"attention={name!r}; choose from {', '.join(ATTENTIONS)}")
    return ATTENTION_TYPES[name]


def kv_elements_per_layer(attention: str, n_kv_heads: int | None, d_head: int, rope_dim: int | None = None,
                          kv_lora_rank: int | None = None) -> int:  # fmt: skip
    """Cached elements per token in one layer (multiply by bytes per element and sum over layers)."""
    return attention_type(attention).cached(n_kv_heads, d_head, rope_dim, kv_lora_rank)
