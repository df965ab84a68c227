"""Decoder-only LM with grouped-query attention (Llama block: pre-RMSNorm, RoPE, SwiGLU, no biases).

K and V have `n_kv_heads` (G) heads, or G_l in layer l for a per-layer layout; query head j reads KV head
j // (H // G), as HF `repeat_kv` does,
so the model exports to `transformers.LlamaForCausalLM` with identical logits. Grouping is done by
`scaled_dot_product_attention(..., enable_gqa=True)` in training and prefill, and by folding each group's
query heads into the query axis for a single-token decode step (`Attention.fold_decode`): K/V are never
repeated to H heads.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from gqa_sweep.config import SDPA_BACKENDS, ModelConfig, divisors  # noqa: F401  (re-exported)


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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 then cast back, as HF Llama does: bf16 variance is too coarse.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.d_head, 2, dtype=torch.float32) / cfg.d_head))
    freqs = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # half-rotation layout (HF Llama), not interleaved pairs
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Cast the tables to x's dtype (as HF does): under autocast fp32 tables would promote q/k to fp32.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class KVCache:
    """Per-layer K/V buffers of shape (B, G_l, block_size, d_head): exactly G_l heads, never H.

    A step attends to the view `buf[:, :, :length]`: strided, not copied (CPU SDPA reads it in place).
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, device, dtype) -> None:
        shapes = [(batch_size, G, cfg.block_size, cfg.d_head) for G in cfg.kv_heads_per_layer]
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.length = 0  # tokens already stored

    def nbytes(self, length: int | None = None) -> int:
        """Bytes held by `length` cached tokens (default: the filled part) over all layers."""
        n = self.length if length is None else length
        per_token = sum(t[:, :, :1].nelement() * t.element_size() for t in self.k + self.v)
        return per_token * n

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's K/V after the cached tokens; return views of everything cached so far."""
        start, T = self.length, k.shape[2]
        self.k[layer][:, :, start : start + T] = k
        self.v[layer][:, :, start : start + T] = v
        return self.k[layer][:, :, : start + T], self.v[layer][:, :, : start + T]


class Attention(nn.Module):
    # Single-token decode folds each group's H/G query heads into the query-length axis, so SDPA reads each
    # KV head once instead of once per query head (CPU enable_gqa does the latter: decode time then grows
    # with H, not G). None = fold on CPU only, where it was measured to help (docs/benchmarks.md); on CUDA it
    # is unmeasured (no GPU was lent), so SDPA's own grouping is kept there. True/False force it either way
    # (`gqa-bench decode` times both).
    fold_decode: bool | None = None
    # The CPU's bf16 SDPA kernel (torch 2.13), forward + backward, is 1.7x (d_head 64) to 4.2x (d_head 16)
    # slower than the same call in fp32 with the casts around it (docs/benchmarks.md), so on the CPU the
    # training / prefill call runs in fp32 (exact in fp32, then rounded once); fp16 is treated alike, unmeasured.
    # Single-token decode keeps the half kernel: upcasting copies the cache each step (1.3-5.3x slower at 1k-4k).
    # None = CPU only; True/False force it.
    fp32_attention: bool | None = None

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        H, G, D = cfg.n_heads, cfg.kv_heads_per_layer[layer], cfg.d_head
        self.n_kv_heads, self.group_size = G, H // G  # this layer's (a per-layer layout differs by layer)
        self.q_proj = nn.Linear(cfg.d_model, H * D, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, G * D, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, G * D, bias=False)
        self.o_proj = nn.Linear(H * D, cfg.d_model, bias=False)
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

    def folds(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" if self.fold_decode is None else self.fold_decode

    def upcasts(self, q: torch.Tensor) -> bool:
        if q.dtype not in (torch.bfloat16, torch.float16):
            return False
        return q.device.type == "cpu" if self.fp32_attention is None else self.fp32_attention

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        causal = T > 1
        if cache is not None:
            k, v = cache.append(layer, k, v)
            causal = T > 1 and cache.length == 0  # a prefill is plain causal; one new token sees every cached one
        with sdpa_context(self.cfg.sdpa_backend):
            if T == 1 and self.folds(x):
                # (B, H, 1, d) -> (B, G, H/G, d): the group's query heads become G rows of H/G "positions",
                # each attending to all of its KV head's keys (no mask: one token sees the whole cache).
                q = q.view(B, self.n_kv_heads, self.group_size, self.cfg.d_head)
                y = F.scaled_dot_product_attention(q, k, v)  # (B, G, H/G, d) = heads in order
                return self.o_proj(y.reshape(B, 1, -1))
            if self.upcasts(q):
                with torch.autocast(q.device.type, enabled=False):  # autocast would cast SDPA back to bf16
                    y = F.scaled_dot_product_attention(
                        q.float(), k.float(), v.float(), is_causal=causal, enable_gqa=True
                    ).to(q.dtype)
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    @torch.no_grad()
    def max_logit(self, x, cos, sin) -> torch.Tensor:
        """max |q.k| / sqrt(d_head) over heads and causal pairs, with K/V broadcast over each group."""
        B, T, _ = x.shape
        q, k, _ = self.qkv(x, cos, sin)
        G, D = self.n_kv_heads, self.cfg.d_head
        q = q.view(B, G, self.group_size, T, D)
        scores = (q @ k.unsqueeze(2).transpose(-1, -2)).abs() / math.sqrt(D)  # (B, G, H/G, T, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~mask, 0).amax()


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                # GPT-2 scaling: residual branches shrink with depth so the stream's variance stays put.
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, std=std)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; `non_embedding` drops the token-embedding table (a lookup, not a matmul)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.cfg.tie_embeddings:
            n -= self.embed.weight.numel()
        return n

    def _rope(self, start: int, T: int):
        return self.rope_cos[start : start + T], self.rope_sin[start : start + T]

    def _check_length(self, n: int) -> None:
        if n > self.cfg.block_size:
            raise ValueError(
                f"sequence of {n} tokens exceeds block_size={self.cfg.block_size}; "
                f"crop the input to at most {self.cfg.block_size} tokens or build the model with a larger block_size"
            )

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        self._check_length(start + T)
        if cache is not None:
            if B != cache.k[0].shape[0]:
                raise ValueError(f"batch of {B} sequences but the cache was built for {cache.k[0].shape[0]}")
            if start > 0 and T > 1:
                raise ValueError("KV cache accepts a prefill at position 0, then one token at a time")
        cos, sin = self._rope(start, T)
        x = self.embed(idx)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def max_attn_logit(self, idx: torch.Tensor) -> float:
        """Largest |q.k|/sqrt(d_head) over all layers and heads on `idx` (attention-logit growth)."""
        T = idx.shape[1]
        self._check_length(T)
        cos, sin = self._rope(0, T)
        x = self.embed(idx)
        worst = torch.zeros((), device=idx.device)
        for block in self.layers:
            worst = torch.maximum(worst, block.attn.max_logit(block.attn_norm(x), cos, sin).float())
            x = block(x, cos, sin)
        return float(worst)

    def set_fold_decode(self, fold: bool | None) -> None:
        """Force (True/False) or restore (None: CPU only) the folded single-token decode in every layer."""
        for block in self.layers:
            block.attn.fold_decode = fold

    def set_fp32_attention(self, fp32: bool | None) -> None:
        """Force (True/False) or restore (None: CPU only) fp32 compute of the bf16/fp16 training attention call."""
        for block in self.layers:
            block.attn.fp32_attention = fp32

    def new_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> KVCache:
        """Empty cache; its dtype defaults to the one K/V are computed in (autocast's, else the weights')."""
        p = self.embed.weight
        if dtype is None:
            amp = torch.is_autocast_enabled(p.device.type)
            dtype = torch.get_autocast_dtype(p.device.type) if amp else p.dtype
        return KVCache(self.cfg, batch_size, p.device, dtype)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append `max_new_tokens` tokens to `idx` (B, T). temperature=0 is greedy.

        With the cache, prompt + new tokens must fit in block_size (RoPE positions are absolute);
        without it, the context slides over the last block_size tokens, as nanoGPT does.
        """
        bs = self.cfg.block_size
        T = idx.shape[1]
        if T == 0 or max_new_tokens < 0 or (top_k is not None and top_k < 1):
            raise ValueError(
                f"need a prompt of >= 1 token (got {T}), max_new_tokens >= 0 (got {max_new_tokens}) "
                f"and top_k >= 1 or None (got {top_k})"
            )
        if T > bs:
            raise ValueError(f"prompt has {T} tokens but block_size={bs}; crop the prompt to its last {bs} tokens")
        if use_cache and T + max_new_tokens > bs:
            raise ValueError(
                f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds block_size={bs} for the KV cache; "
                f"use max_new_tokens <= {bs - T} or use_cache=False (sliding window)"
            )
        cache = self.new_cache(idx.shape[0]) if use_cache else None
        logits = self(idx, cache)[:, -1] if use_cache else None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = self(idx[:, -bs:])[:, -1]
            nxt = sample(logits, temperature, top_k, generator)
            idx = torch.cat((idx, nxt), dim=1)
            if use_cache and _ < max_new_tokens - 1:
                logits = self(nxt, cache)[:, -1]
        return idx


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator=None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
