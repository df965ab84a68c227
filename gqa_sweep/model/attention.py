"""The three attention types behind one interface, and the cache each one keeps.

    GQAAttention  K and V of G heads (MHA at G = H, MQA at G = 1); query head j reads KV head j // (H / G).
    GTAAttention  grouped-tied (arXiv 2505.21487 §3.3.1): one tied state of G heads is V, its first d_head - d_R
                  dims are K's unrotated part, and one RoPE key of d_R dims is shared by every head.
    MLAAttention  multi-head latent (DeepSeek-V2 §2.1): a normalised latent c of d_c dims plus one RoPE key k_R of
                  d_R dims; per-head K / V are up-projections of c. Trains expanded, decodes absorbed (W_UK folded
                  into the query, W_UV into the output, as DeepSeek-V3's attn_impl="absorb"): only c and k_R cached.

Each has forward(x, cos, sin, cache, layer) and max_logit(x, cos, sin); `build_attention(cfg, layer)` picks one
and `new_cache(cfg, ...)` its cache (gqa_sweep/model/cache.py). Training and prefill go through
`scaled_dot_product_attention(..., enable_gqa=True)` with G heads of K/V for GQA and GTA (never repeated to H).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from gqa_sweep.model.cache import Cache, KVCache, LatentCache, TiedCache, new_cache  # noqa: F401 (also exported here)
from gqa_sweep.model.kv_formula import attention_type
from gqa_sweep.model.layers import RMSNorm, apply_rope
from gqa_sweep.model.shape import MLA_NORM_EPS, ModelConfig


def sdpa_context(backend: str):
    """Pin SDPA to one backend, so a silent fallback to the math kernel cannot hide in a sweep."""
    if backend == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        {
            "flash": SDPBackend.FLASH_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH,
        }[backend]
    )


# ---------------------------------------------------------------- attention


class AttentionBase(nn.Module):
    # Single-token decode folds each group's H/G query heads into the query-length axis, so SDPA reads each
    # KV head once instead of once per query head (CPU enable_gqa does the latter: decode time then grows
    # with H, not G). None = fold on CPU only, where it helps (docs/benchmarks.md); on CUDA SDPA's own grouping
    # is kept until a GPU measurement says otherwise. True/False force it either way (`gqa-bench decode` times
    # both). GTA folds alike; MLA always decodes absorbed (H query rows, one latent head).
    fold_decode: bool | None = None
    # The CPU's bf16 SDPA kernel, forward + backward, is slower than the same call in fp32 with the casts around
    # it (docs/benchmarks.md), so on the CPU the training / prefill call runs in fp32 (exact in fp32, then rounded
    # once); fp16 is treated alike. Single-token decode keeps the half kernel: upcasting would copy the cache
    # every step.
    # None = CPU only; True/False force it.
    fp32_attention: bool | None = None

    def folds(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" if self.fold_decode is None else self.fold_decode

    def upcasts(self, q: torch.Tensor) -> bool:
        if q.dtype not in (torch.bfloat16, torch.float16):
            return False
        return q.device.type == "cpu" if self.fp32_attention is None else self.fp32_attention

    def attend_one(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One token's attention, q (B, H, 1, d) over the cached k, v (B, G, L, d): (B, 1, H * d), heads in order.

        GQA's and GTA's decode step. Folded, the group's query heads become H/G query rows of its one K/V head, all
        attending to every cached key. A static cache's mask always folds: SDPA has no fused kernel for a mask
        with enable_gqa, while the folded call is a plain one (flash / memory-efficient / cuDNN on CUDA).
        """
        B = q.shape[0]
        if mask is None and not self.folds(q):
            return self.sdpa(q, k, v, causal=False, scale=self.scale).transpose(1, 2).reshape(B, 1, -1)
        q = q.view(B, self.n_kv_heads, self.group_size, q.shape[-1])
        with sdpa_context(self.cfg.sdpa_backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale).reshape(B, 1, -1)

    def attend(self, q, k, v, causal: bool, cache: Cache | None) -> torch.Tensor:
        """GQA's and GTA's attention over G heads of K/V, through o_proj: the single-token step or grouped SDPA."""
        B, _, T, _ = q.shape
        if T == 1:
            return self.o_proj(self.attend_one(q, k, v, None if cache is None else cache.mask))
        y = self.sdpa(q, k, v, causal, scale=self.scale)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def sdpa(self, q, k, v, causal: bool, scale: float | None = None) -> torch.Tensor:
        """The training / prefill call: grouped over K/V heads, fp32 on the CPU for half inputs (see above)."""
        with sdpa_context(self.cfg.sdpa_backend):
            if self.upcasts(q):
                with torch.autocast(q.device.type, enabled=False):  # autocast would cast SDPA back to bf16
                    return F.scaled_dot_product_attention(
                        q.float(), k.float(), v.float(), is_causal=causal, enable_gqa=True, scale=scale
                    ).to(q.dtype)
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True, scale=scale)


def _max_logit(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """max |q.k| * scale over heads and causal pairs; q (B, H, T, d), k (B, G, T, d) broadcast over each group."""
    B, H, T, D = q.shape
    G = k.shape[1]
    scores = (q.view(B, G, H // G, T, D) @ k.unsqueeze(2).transpose(-1, -2)).abs() * scale  # (B, G, H/G, T, T)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, 0).amax()


def _causal(T: int, cache: Cache | None) -> bool:
    return T > 1 and (cache is None or cache.length == 0)  # a prefill is causal; one new token sees all cached


class GroupedAttention(AttentionBase):
    """GQA and GTA: a query of H heads, a cached pair of G-head states (`project`), and the K and V of G heads
    that pair gives (`kv`); attention is grouped SDPA or the single-token step (AttentionBase.attend)."""

    def forward(self, x, cos, sin, cache: Cache | None = None, layer: int = 0) -> torch.Tensor:
        q, *state = self.project(x, cos, sin)
        causal = _causal(x.shape[1], cache)
        if cache is not None:
            state = cache.append(layer, *state)
        return self.attend(q, *self.kv(*state), causal, cache)

    @torch.no_grad()
    def max_logit(self, x, cos, sin) -> torch.Tensor:
        """max |q.k| x the attention scale over heads and causal pairs, with K broadcast over each group."""
        q, *state = self.project(x, cos, sin)
        return _max_logit(q, self.kv(*state)[0], self.scale)


class GQAAttention(GroupedAttention):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        H, G, D = cfg.n_heads, cfg.kv_heads_per_layer[layer], cfg.d_head
        self.n_kv_heads, self.group_size = G, H // G  # this layer's (a per-layer layout differs by layer)
        self.q_proj = nn.Linear(cfg.d_model, H * D, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, G * D, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, G * D, bias=False)
        self.o_proj = nn.Linear(H * D, cfg.d_model, bias=False)
        self.scale = cfg.attention_scale  # 1/sqrt(d_head); muP: 1/d_head, equal at the base width (shape.py)
        if cfg.qk_norm:  # one gain vector of d_head shared by all heads, as Qwen3's q_norm / k_norm
            self.q_norm = RMSNorm(D, cfg.norm_eps)
            self.k_norm = RMSNorm(D, cfg.norm_eps)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        B, T, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(B, T, cfg.n_heads, cfg.d_head)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, cfg.d_head)
        if cfg.qk_norm:  # before RoPE: the rotation keeps the norm, so |q.k| <= |g_q| |g_k| after it too
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, cfg.d_head).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    project = qkv  # the cached pair is K and V themselves (KVCache)

    def kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


Attention = GQAAttention  # the name model.Attention had before the variants


class GTAAttention(GroupedAttention):
    """One tied state per group is V; K = [its first d_head - d_R dims ; RoPE key of d_R dims shared by all heads]."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        H, G, D = cfg.n_heads, cfg.kv_heads_per_layer[layer], cfg.d_head
        self.n_kv_heads, self.group_size, self.d_nope = G, H // G, D - cfg.rope_dim
        self.q_proj = nn.Linear(cfg.d_model, H * D, bias=False)
        self.kv_proj = nn.Linear(cfg.d_model, G * D, bias=False)  # the tied state
        self.k_rope_proj = nn.Linear(cfg.d_model, cfg.rope_dim, bias=False)  # one head, broadcast to all
        self.o_proj = nn.Linear(H * D, cfg.d_model, bias=False)
        self.scale = cfg.attention_scale  # 1/sqrt(d_head): muP is refused for GTA (shape.py)

    def project(self, x, cos, sin):
        """q (B, H, T, d_head) with RoPE on its last d_R dims; tied (B, G, T, d_head); k_R (B, 1, T, d_R)."""
        B, T, _ = x.shape
        n = self.d_nope
        q = self.q_proj(x).view(B, T, self.cfg.n_heads, self.cfg.d_head).transpose(1, 2)
        q = torch.cat((q[..., :n], apply_rope(q[..., n:], cos, sin)), dim=-1)
        tied = self.kv_proj(x).view(B, T, self.n_kv_heads, self.cfg.d_head).transpose(1, 2)
        k_rope = apply_rope(self.k_rope_proj(x).view(B, T, 1, -1).transpose(1, 2), cos, sin)
        return q, tied, k_rope

    def keys(self, tied: torch.Tensor, k_rope: torch.Tensor) -> torch.Tensor:
        return torch.cat((tied[..., : self.d_nope], k_rope.expand(-1, tied.shape[1], -1, -1)), dim=-1)

    def kv(self, tied: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K of G heads (a copy of the cache's unrotated part + k_R, never H heads); V is the tied state itself.
        Building K for SDPA was as fast or faster on the CPU than reading the tied state in place with two score
        matmuls, a softmax and a third (docs/metrics.md)."""
        return self.keys(tied, k_rope), tied


class MLAAttention(AttentionBase):
    """DeepSeek-V2 MLA; names follow HF DeepseekV3Attention (q_a/q_b, kv_a, kv_b) so export only renames."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        d, H = cfg.d_model, cfg.n_heads
        self.dn, self.dr, self.dc, self.dv = cfg.qk_nope_dim, cfg.rope_dim, cfg.kv_lora_rank, cfg.v_dim
        q_out = H * (self.dn + self.dr)
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(d, q_out, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=False)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, MLA_NORM_EPS)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, q_out, bias=False)
        self.kv_a_proj = nn.Linear(d, self.dc + self.dr, bias=False)  # latent c and k_R (before norm / RoPE)
        self.kv_a_norm = RMSNorm(self.dc, MLA_NORM_EPS)
        self.kv_b_proj = nn.Linear(self.dc, H * (self.dn + self.dv), bias=False)  # W_UK and W_UV, per head
        self.o_proj = nn.Linear(H * self.dv, d, bias=False)
        self.scale = 1 / math.sqrt(self.dn + self.dr)

    def query(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        """q_nope (B, H, T, d_nope) and q_R (B, H, T, d_R), rotated."""
        B, T, _ = x.shape
        q = self.q_proj(x) if self.cfg.q_lora_rank is None else self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        q = q.view(B, T, self.cfg.n_heads, self.dn + self.dr).transpose(1, 2)
        return q[..., : self.dn], apply_rope(q[..., self.dn :], cos, sin)

    def latent(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached pair: normalised latent c (B, 1, T, d_c) and rotated k_R (B, 1, T, d_R)."""
        B, T, _ = x.shape
        ckr = self.kv_a_proj(x).view(B, 1, T, self.dc + self.dr)
        return self.kv_a_norm(ckr[..., : self.dc]), apply_rope(ckr[..., self.dc :], cos, sin)

    def expand(self, q_nope, q_rope, c, k_rope):
        """The training form: per-head q, K = [W_UK c ; k_R] and V = W_UV c of H heads."""
        B, _, T, _ = c.shape
        kv = self.kv_b_proj(c).view(B, T, self.cfg.n_heads, self.dn + self.dv).transpose(1, 2)
        k = torch.cat((kv[..., : self.dn], k_rope.expand(-1, self.cfg.n_heads, -1, -1)), dim=-1)
        return torch.cat((q_nope, q_rope), dim=-1), k, kv[..., self.dn :]

    def forward(self, x, cos, sin, cache: LatentCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q_nope, q_rope = self.query(x, cos, sin)
        c, k_rope = self.latent(x, cos, sin)
        if cache is not None and T == 1 and (cache.length > 0 or cache.pos is not None):
            return self.absorbed(q_nope, q_rope, *cache.append(layer, torch.cat((c, k_rope), -1)), mask=cache.mask)
        if cache is not None:  # a prefill: cache the pair, attend in the expanded form
            cache.append(layer, torch.cat((c, k_rope), -1))
        q, k, v = self.expand(q_nope, q_rope, c, k_rope)
        y = self.sdpa(q, k, v, causal=T > 1, scale=self.scale)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def absorbed(self, q_nope: torch.Tensor, q_rope: torch.Tensor, ckr: torch.Tensor, mask=None) -> torch.Tensor:
        """One token against the cached [c ; k_R] (B, 1, L, d_c + d_R): scores q_nope W_UK . c + q_R . k_R, output
        (softmax . c) W_UV, so per-head K and V are never formed; the H heads are H query rows of one KV head."""
        B, H = q_nope.shape[0], self.cfg.n_heads
        w = self.kv_b_proj.weight.view(H, self.dn + self.dv, self.dc)
        q_c = torch.einsum("bhd,hdc->bhc", q_nope[:, :, 0], w[:, : self.dn])  # W_UK into the query
        q = torch.cat((q_c, q_rope[:, :, 0]), dim=-1).unsqueeze(1)  # (B, 1, H, d_c + d_R)
        with sdpa_context(self.cfg.sdpa_backend):
            y = F.scaled_dot_product_attention(q, ckr, ckr[..., : self.dc], attn_mask=mask, scale=self.scale)
        y = torch.einsum("bhc,hvc->bhv", y[:, 0], w[:, self.dn :])  # W_UV into the output
        return self.o_proj(y.reshape(B, 1, H * self.dv))

    @torch.no_grad()
    def max_logit(self, x, cos, sin) -> torch.Tensor:
        q, k, _ = self.expand(*self.query(x, cos, sin), *self.latent(x, cos, sin))
        return _max_logit(q, k, self.scale)


def build_attention(cfg: ModelConfig, layer: int = 0) -> AttentionBase:
    """The type's module, named in the registry (gqa_sweep/model/kv_formula.py ATTENTION_TYPES)."""
    return globals()[attention_type(cfg.attention).module](cfg, layer)
