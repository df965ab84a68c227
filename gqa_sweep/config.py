"""Model shape and its checks, torch-free: the CLI validates a config before it imports torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class ModelConfig:
    vocab_size: int
    block_size: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int | None = None  # None: d_model // n_heads; set it to hold head size fixed across a sweep
    d_ff: int | None = None  # None: SwiGLU width ~8/3 d_model, rounded up to a multiple of 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    sdpa_backend: str = "auto"

    def __post_init__(self) -> None:
        H, G = self.n_heads, self.n_kv_heads
        for name in ("vocab_size", "block_size", "n_layers", "d_model", "n_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not isinstance(G, int) or G <= 0:
            raise ValueError(
                f"n_kv_heads={G!r} must be a positive integer; choose n_kv_heads from "
                f"{', '.join(map(str, divisors(H)))} (divisors of n_heads={H})"
            )
        if G > H:
            raise ValueError(
                f"n_kv_heads={G} is larger than n_heads={H}; choose n_kv_heads from "
                f"{', '.join(map(str, divisors(H)))} (G=1 is MQA, G={H} is MHA)"
            )
        if H % G:
            raise ValueError(
                f"n_heads={H} is not divisible by n_kv_heads={G}; choose n_kv_heads from "
                f"{', '.join(map(str, divisors(H)))}"
            )
        if self.d_head is None:
            if self.d_model % H or self.d_model // H % 2:
                why = "is not divisible by" if self.d_model % H else "gives an odd d_head (RoPE needs it even) with"
                ok = [h for h in divisors(self.d_model) if self.d_model // h % 2 == 0]
                raise ValueError(
                    f"d_model={self.d_model} {why} n_heads={H}; choose n_heads from "
                    f"{', '.join(map(str, ok)) or '(none: d_model is odd)'} or set an even d_head explicitly"
                )
            self.d_head = self.d_model // H
        if not isinstance(self.d_head, int) or self.d_head <= 0 or self.d_head % 2:
            raise ValueError(f"d_head={self.d_head!r} must be a positive even integer for RoPE; set an even d_head")
        if self.d_ff is None:
            self.d_ff = 32 * math.ceil(8 * self.d_model / 3 / 32)  # any width exports: HF takes it as is
        if not isinstance(self.d_ff, int) or self.d_ff <= 0:
            raise ValueError(f"d_ff={self.d_ff!r} must be a positive integer (or None for ~8/3 d_model)")
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend={self.sdpa_backend!r}; choose from {', '.join(SDPA_BACKENDS)}")

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Bytes of K and V cache one token occupies across all layers: 2 * G * d_head * L * bytes."""
        return 2 * self.n_kv_heads * self.d_head * self.n_layers * bytes_per_element

    def to_dict(self) -> dict:
        return asdict(self)
