"""The Llama block's small parts: RMSNorm and rotary position embeddings (half-rotation layout, as HF)."""

from __future__ import annotations

import torch
from torch import nn

from gqa_sweep.model.shape import ModelConfig


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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Cast the tables to x's dtype (as HF does): under autocast fp32 tables would promote q/k to fp32.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    # Over the rotated dims: all of d_head (GQA), d_R (GTA, MLA: HF DeepseekV3's head_dim = qk_rope_head_dim).
    R = cfg.rope_dims
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, R, 2, dtype=torch.float32) / R))
    freqs = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # half-rotation layout (HF Llama), not interleaved pairs
    return emb.cos(), emb.sin()
