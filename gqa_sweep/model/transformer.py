"""Decoder-only LM (Llama block: pre-RMSNorm, RoPE, SwiGLU, no biases) around one attention type.

`model.attention` picks it (gqa_sweep/model/attention.py): grouped-query (the default: K and V of `n_kv_heads` (G)
heads, or G_l in layer l, query head j reading KV head j // (H // G) as HF `repeat_kv` does, so the model exports
to `transformers.LlamaForCausalLM` with identical logits), grouped-tied (GTA) or multi-head latent (MLA, exports
to `DeepseekV3ForCausalLM`). Grouping is done by `scaled_dot_product_attention(..., enable_gqa=True)` in
training and prefill, and by folding each group's query heads into the query axis for a single-token decode
step (`fold_decode`): K/V are never repeated to H heads.

`model.parametrization=mup` applies the maximal update parametrization (Yang et al. 2022, "Tensor Programs V"),
with microsoft/mup 1.0.0's rules for Adam, so that the lr tuned at d_model = `mup_base_width` stays the best lr as
the model widens. Widths are compared with the base model `cfg.mup_base` (this model at the base width), and
m_in = fan-in / the base's fan-in:

    hidden matrices: q, k, v, o, gate, up, down   init std = init_std / sqrt(m_in); Adam lr x 1 / m_in; AdamW's
        weight decay x m_in (lr x decay stays the base's, as MuAdamW). K and V are hidden matrices whatever G is:
        their fan-in is d_model, their (G x d_head) fan-out does not enter the rule.
    input embedding, RMSNorm gains (one width axis)   sp's init (std init_std; ones) and sp's lr.
    readout (lm_head)   logits x 1 / m, m = d_model / mup_base_width (MuReadout's output multiplier), sp's lr;
        untied: zero init (mup's readout_zero_init, the muP paper's choice); tied: it is the embedding (init std
        init_std, MuSharedReadout), so only the multiplier differs.
    attention logits   x sqrt(d_head of the base) / d_head instead of 1 / sqrt(d_head) (cfg.attention_scale): the
        same value at the base width, 1 / d_head as heads widen. The query projection is zero-initialised (the
        muP paper's GPT-3 recipe, mup's query_zero_init): at init q.k is uncorrelated, ~ sqrt(d_head), so under
        1 / d_head its logits would still shrink with width; with q = 0 every width starts from uniform attention.

At the base width every rule is sp's except the zero-init readout and query. GPT-2's depth scaling of o_proj / down_proj
(std / sqrt(2 n_layers)) applies under both: it is about depth, not width.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gqa_sweep.model.attention import Cache, build_attention, new_cache
from gqa_sweep.model.layers import RMSNorm, rope_tables
from gqa_sweep.model.shape import ModelConfig


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
        self.attn = build_attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache: Cache | None = None, layer: int = 0) -> torch.Tensor:
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
        # muP's readout multiplier 1 / m (1 under sp); applied to the logits, so the weights stay plain Llama's
        self.output_mult = 1.0 if cfg.parametrization == "sp" else cfg.mup_base.d_model / cfg.d_model
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        mup = self.cfg.parametrization == "mup"
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif mup and (name == "lm_head.weight" or name.endswith("q_proj.weight")):
                nn.init.zeros_(p)  # untied readout (a tied one is named embed.weight) and the query: see the top
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                # GPT-2 scaling: residual branches shrink with depth so the stream's variance stays put.
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layers * self.fan_in_mult(name)))
            else:
                nn.init.normal_(p, std=std / math.sqrt(self.fan_in_mult(name)))

    def fan_in_mult(self, name: str) -> float:
        """muP's m_in of a parameter: its fan-in over the base model's for a hidden matrix, else 1 (sp: 1)."""
        cfg = self.cfg
        if cfg.parametrization == "sp" or not name.endswith("_proj.weight"):
            return 1.0
        base = cfg.mup_base
        if name.endswith("o_proj.weight"):  # fan-in H x d_head
            return cfg.d_head / base.d_head
        if name.endswith("down_proj.weight"):
            return cfg.d_ff / base.d_ff
        return cfg.d_model / base.d_model  # q, k, v (any G), gate, up

    def lr_multipliers(self) -> dict[str, float]:
        """Adam's per-parameter lr multiplier (muP: 1 / m_in for hidden matrices; sp: all 1), by parameter name
        (named_parameters: a tied readout appears once, as embed.weight)."""
        return {name: 1 / self.fan_in_mult(name) for name, _ in self.named_parameters()}

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

    def forward(self, idx: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        self._check_length(start + T)
        if cache is not None:
            if B != cache.batch_size:
                raise ValueError(f"batch of {B} sequences but the cache was built for {cache.batch_size}")
            if (start > 0 or cache.pos is not None) and T > 1:
                raise ValueError("KV cache accepts a prefill at position 0, then one token at a time")
        static = cache is not None and cache.pos is not None  # gqa_sweep/model/decode.py: position on the device
        cos, sin = cache.static_step(self.rope_cos, self.rope_sin) if static else self._rope(start, T)
        x = self.embed(idx)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.advance(T)
        logits = self.lm_head(self.norm(x))
        return logits if self.output_mult == 1.0 else logits * self.output_mult

    @torch.no_grad()
    def max_attn_logit(self, idx: torch.Tensor) -> float:
        """Largest |q.k| x the attention scale (sp: 1/sqrt(d_head)) over all layers and heads on `idx`."""
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

    def new_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> Cache:
        """Empty cache; its dtype defaults to the one K/V are computed in (autocast's, else the weights')."""
        p = self.embed.weight
        if dtype is None:
            amp = torch.is_autocast_enabled(p.device.type)
            dtype = torch.get_autocast_dtype(p.device.type) if amp else p.dtype
        return new_cache(self.cfg, batch_size, p.device, dtype)

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
