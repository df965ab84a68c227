"""The KV cache each attention type keeps: per-layer buffers with the token axis at dim 2, filled up to `length`.

    KVCache      GQA: K and V of G_l heads per layer (never H).
    TiedCache    GTA: the tied state of G_l heads and the single-head RoPE key.
    LatentCache  MLA: one buffer of [c ; k_R] per layer.

Dynamic (the default): a step appends at `length` and attends to views of the filled part. Static
(`make_static`, gqa_sweep/model/decode.py): the position is a device tensor, so a step has fixed shapes.
"""

from __future__ import annotations

import torch

from gqa_sweep.model.kv_formula import attention_type
from gqa_sweep.model.shape import ModelConfig


class Cache:
    """Per-layer buffers with the token axis at dim 2, filled up to `length`; a step attends to views, not copies."""

    def __init__(self, layers: list[tuple[torch.Tensor, ...]]) -> None:
        self.layers = layers
        self.length = 0  # tokens already stored
        # Static mode (gqa_sweep/model/decode.py): the write position lives on the device, so a single-token step
        # has fixed shapes and can be captured once and replayed without the host. A step then attends to the
        # whole buffer under `mask` (True up to and including `pos`): torch's SDPA takes no per-sequence length.
        self.pos: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self._slots: torch.Tensor | None = None

    def make_static(self) -> None:
        """Continue from `length` tokens with the position as a device tensor; one token per step from here on."""
        dev = self.layers[0][0].device
        self.pos = torch.tensor([self.length], device=dev)
        self._slots = torch.arange(self.layers[0][0].shape[2], device=dev)

    def static_step(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's RoPE rows of the tables and its mask of filled slots, both read from `pos` on the device."""
        self.mask = (self._slots <= self.pos).view(1, 1, 1, -1)
        return cos.index_select(0, self.pos), sin.index_select(0, self.pos)

    def advance(self, T: int) -> None:
        self.length += T
        if self.pos is not None:
            self.pos.add_(T)

    @property
    def batch_size(self) -> int:
        return self.layers[0][0].shape[0]

    def buffers(self) -> list[torch.Tensor]:
        return [buf for layer in self.layers for buf in layer]

    def elements_per_token(self, layer: int) -> int:
        """Elements one token of one sequence occupies in `layer` (the formula of gqa_sweep/model/kv_formula.py)."""
        return sum(buf[:1, :, :1].nelement() for buf in self.layers[layer])

    def nbytes(self, length: int | None = None) -> int:
        """Bytes held by `length` cached tokens (default: the filled part) over all layers and sequences."""
        n = self.length if length is None else length
        return n * sum(buf[:, :, :1].nelement() * buf.element_size() for buf in self.buffers())

    def append(self, layer: int, *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Write this step's tensors after the cached tokens; return views of everything cached so far."""
        if self.pos is not None:  # static: write at the device position, attend to the whole buffer under `mask`
            for buf, x in zip(self.layers[layer], parts):
                buf.index_copy_(2, self.pos, x)
            return tuple(self.layers[layer])
        start, T = self.length, parts[0].shape[2]
        for buf, x in zip(self.layers[layer], parts):
            buf[:, :, start : start + T] = x
        return tuple(buf[:, :, : start + T] for buf in self.layers[layer])


class KVCache(Cache):
    """GQA: K and V of shape (B, G_l, block_size, d_head): exactly G_l heads, never H."""

    def __init__(self, cfg: ModelConfig, batch_size: int, device, dtype) -> None:
        def buf(G):
            return torch.zeros(batch_size, G, cfg.block_size, cfg.d_head, device=device, dtype=dtype)

        super().__init__([(buf(G), buf(G)) for G in cfg.kv_heads_per_layer])

    @property
    def k(self) -> list[torch.Tensor]:
        return [layer[0] for layer in self.layers]

    @property
    def v(self) -> list[torch.Tensor]:
        return [layer[1] for layer in self.layers]


class TiedCache(Cache):
    """GTA: the tied state (B, G_l, block_size, d_head) and the single-head RoPE key (B, 1, block_size, d_R)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, device, dtype) -> None:
        def buf(heads, dim):
            return torch.zeros(batch_size, heads, cfg.block_size, dim, device=device, dtype=dtype)

        super().__init__([(buf(G, cfg.d_head), buf(1, cfg.rope_dim)) for G in cfg.kv_heads_per_layer])


class LatentCache(Cache):
    """MLA: one buffer (B, 1, block_size, d_c + d_R) per layer: the normalised latent, then k_R (rotated).

    One buffer, so a decode step reads [c; k_R] as the key and its first d_c dims as the value in one SDPA call.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, device, dtype) -> None:
        shape = (batch_size, 1, cfg.block_size, cfg.kv_lora_rank + cfg.rope_dim)
        super().__init__([(torch.zeros(shape, device=device, dtype=dtype),) for _ in range(cfg.n_layers)])


def new_cache(cfg: ModelConfig, batch_size: int, device, dtype) -> Cache:
    """The type's cache, named in the registry (gqa_sweep/model/kv_formula.py ATTENTION_TYPES)."""
    return globals()[attention_type(cfg.attention).cache](cfg, batch_size, device, dtype)
