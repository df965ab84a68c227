"""The model's shape: ModelConfig (checked at construction, one-line errors naming the fix), `build_shape`, the
one place a shape is built from a description, and the parameter arithmetic that param matching needs.
Torch-free; the run's config (gqa_sweep.config) builds its shape from Hydra's model group through build_shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from gqa_sweep.model.kv_formula import (
    MLA_KNOBS,
    attention_type,
    divisors,
    kv_elements_per_layer,
)

SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
DECODE_MODES = ("auto", "eager", "graph")  # gqa_sweep/model/decode.py: auto = graph on CUDA, eager elsewhere
PARAMETRIZATIONS = ("sp", "mup")  # standard | maximal update (muP: gqa_sweep/model/transformer.py has the rules)


def _check_kv_heads(G, H: int, layer: int | None = None) -> None:
    """G must divide H; a per-layer list's message names the layer (`n_kv_heads[2]`)."""
    name = "n_kv_heads" if layer is None else f"n_kv_heads[{layer}]"
    where = "" if layer is None else f"layer {layer}: "
    choose = f"choose {name} from {', '.join(map(str, divisors(H)))}"
    if not isinstance(G, int) or isinstance(G, bool) or G <= 0:
        raise ValueError(f"{where}{name}={G!r} must be a positive integer; {choose} (divisors of n_heads={H})")
    if G > H:
        raise ValueError(f"{where}{name}={G} is larger than n_heads={H}; {choose} (G=1 is MQA, G={H} is MHA)")
    if H % G:
        raise ValueError(f"{where}n_heads={H} is not divisible by {name}={G}; {choose}")


@dataclass
class ModelConfig:
    vocab_size: int | None  # None: a shape whose vocabulary its data sets later (RunSpec.model_at)
    block_size: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int | list[int]  # G, or one G per layer (e.g. [4, 2, 1, 1]); a list of equal G means that G
    d_head: int | None = None  # None: d_model // n_heads; set it to hold head size fixed across a sweep
    d_ff: int | None = None  # None: SwiGLU width ~8/3 d_model, rounded up to a multiple of 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    sdpa_backend: str = "auto"
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (OLMo-2, Qwen3): bounds attention logits
    # gqa | gta (grouped-tied: one K/V state per group, arXiv 2505.21487) | mla (DeepSeek-V2 latent attention)
    attention: str = "gqa"
    rope_dim: int | None = None  # gta / mla: d_R rotated dims (one RoPE key shared by all heads); None: d_head / 2
    kv_lora_rank: int | None = None  # mla: d_c, the cached latent's size; None: 4 * d_head (DeepSeek-V2)
    q_lora_rank: int | None = None  # mla: the query's low-rank latent; None: a plain q_proj
    qk_nope_dim: int | None = None  # mla: per-head q/k dims without RoPE; None: d_head
    v_dim: int | None = None  # mla: per-head value dims; None: d_head
    parametrization: str = "sp"  # sp | mup: muP's init, attention scale and Adam lr rules (model/transformer.py)
    mup_base_width: int | None = None  # mup: the d_model its hyperparameters are tuned at; None: this d_model
    mup_base_d_head: int | None = None  # mup: d_head at the base width; None: base width / H if d_head = d_model / H

    def __post_init__(self) -> None:
        H, G = self.n_heads, self.n_kv_heads
        for name in ("vocab_size", "block_size", "n_layers", "d_model", "n_heads"):
            if name == "vocab_size" and self.vocab_size is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if isinstance(G, (list, tuple)):
            if len(G) != self.n_layers:
                raise ValueError(
                    f"n_kv_heads={list(G)} has {len(G)} entries but n_layers={self.n_layers}; give one G per layer"
                )
            for i, g in enumerate(G):
                _check_kv_heads(g, H, layer=i)
            # A list of one G is the uniform model: the same module shapes, the same row.
            self.n_kv_heads = G = G[0] if len(set(G)) == 1 else list(G)
        else:
            _check_kv_heads(G, H)
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
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"qk_norm={self.qk_norm!r} must be true or false")
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend={self.sdpa_backend!r}; choose from {', '.join(SDPA_BACKENDS)}")
        self._check_attention()
        self._check_parametrization()

    def _check_parametrization(self) -> None:
        p, base = self.parametrization, self.mup_base_width
        if p not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization={p!r}; choose from {', '.join(PARAMETRIZATIONS)}")
        if p == "sp" and base is not None:
            raise ValueError(f"mup_base_width={base} applies to parametrization=mup only; drop it or set "
                             "parametrization=mup")  # fmt: skip
        if p == "mup" and self.attention != "gqa":
            raise ValueError(f"parametrization=mup is implemented for attention=gqa only (attention="
                             f"{self.attention}); use parametrization=sp or attention=gqa")  # fmt: skip
        if base is not None and (not isinstance(base, int) or isinstance(base, bool) or base <= 0):
            raise ValueError(f"mup_base_width={base!r} must be a positive integer (the d_model the lr was tuned at)")
        base_head = self.mup_base_d_head
        if base_head is not None and (p == "sp" or not isinstance(base_head, int) or base_head <= 0 or base_head % 2):
            raise ValueError(f"mup_base_d_head={base_head!r} must be a positive even integer and needs "
                             "parametrization=mup; drop it or fix it")  # fmt: skip
        if base_head is None and base is not None and self.d_head == self.d_model // self.n_heads and (
                base % (2 * self.n_heads)):
            raise ValueError(f"mup_base_width={base} gives the base model an odd or fractional d_head "
                             f"(d_head = d_model / n_heads = {base} / {self.n_heads}); choose a multiple of "
                             f"{2 * self.n_heads}, or hold d_head fixed across widths with mup_base_d_head="
                             f"{self.d_head}")  # fmt: skip

    def _check_attention(self) -> None:
        """The variant's knobs: only its own may be set; defaults filled in (d_R = d_head / 2, d_c = 4 d_head)."""
        a, D = self.attention, self.d_head
        own = attention_type(a).knobs
        for name in MLA_KNOBS:
            value = getattr(self, name)
            if name not in own and value is not None:
                uses = "attention=gta or mla" if name == "rope_dim" else "attention=mla"
                raise ValueError(f"{name}={value!r} applies to {uses} only (attention={a}); drop it or set {uses}")
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name}={value!r} must be a positive integer (or null for its default)")
        if a == "gqa":
            return
        if self.qk_norm:
            raise ValueError(f"qk_norm is implemented for attention=gqa only; drop qk_norm or use attention=gqa "
                             f"(attention={a})")  # fmt: skip
        if self.rope_dim is None:
            self.rope_dim = D // 2
        if self.rope_dim % 2:
            raise ValueError(
                f"rope_dim={self.rope_dim} must be even (RoPE rotates pairs of dims); e.g. rope_dim={D // 2}"
            )
        if a == "gta" and self.rope_dim >= D:
            raise ValueError(f"rope_dim={self.rope_dim} must be below d_head={D} for GTA (K = the tied state's first "
                             f"d_head - rope_dim dims + the RoPE key); e.g. rope_dim={D // 2}")  # fmt: skip
        if a == "mla":
            if not self.uniform:
                raise ValueError(f"n_kv_heads={self.kv_layout} is a per-layer G list, but attention=mla has no KV "
                                 "groups (one latent per token); give one integer n_kv_heads (ignored by MLA)")
            # Every head has its own (expanded) K and V, as DeepseekV3's num_key_value_heads = num_attention_heads.
            self.n_kv_heads = self.n_heads
            self.kv_lora_rank = self.kv_lora_rank or 4 * D
            self.qk_nope_dim = self.qk_nope_dim or D
            self.v_dim = self.v_dim or D

    @property
    def kv_groups(self) -> int | list[int] | None:
        """G of the rows: None for MLA, which caches one latent per token and has no KV groups."""
        return self.n_kv_heads if attention_type(self.attention).grouped else None

    @property
    def mha_twin(self) -> ModelConfig:
        """The plain MHA model of this shape (G = H, GQA attention, the variants' knobs dropped): what param matching
        matches and what the GPU decode sizes its batch by."""
        return replace(self, n_kv_heads=self.n_heads, attention="gqa", **dict.fromkeys(MLA_KNOBS))

    @property
    def rope_dims(self) -> int:
        """Dims RoPE rotates (and its frequency table spans): all of d_head for GQA, d_R for GTA and MLA."""
        return self.d_head if self.attention == "gqa" else self.rope_dim

    def kv_elements_per_layer(self, layer: int = 0) -> int:
        return kv_elements_per_layer(self.attention, self.kv_heads_per_layer[layer], self.d_head, self.rope_dim,
                                     self.kv_lora_rank)  # fmt: skip

    @property
    def kv_heads_per_layer(self) -> list[int]:
        G = self.n_kv_heads
        return list(G) if isinstance(G, list) else [G] * self.n_layers

    @property
    def uniform(self) -> bool:
        return not isinstance(self.n_kv_heads, list)

    @property
    def kv_layout(self) -> str:
        """G of each layer, comma-joined ("2,2" uniform, "4,2,1,1" front-loaded): the row's `kv_layout`."""
        return ",".join(map(str, self.kv_heads_per_layer))

    @property
    def group_size(self) -> int | None:
        """H / G; None for a per-layer layout (each layer has its own)."""
        return self.n_heads // self.n_kv_heads if self.uniform else None

    def kv_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Cache bytes one token occupies across all layers: GQA 2 * sum_l G_l * d_head * bytes; GTA
        sum_l (G_l * d_head + d_R) * bytes; MLA n_layers * (d_c + d_R) * bytes (gqa_sweep/model/kv_formula.py)."""
        return sum(self.kv_elements_per_layer(i) for i in range(self.n_layers)) * bytes_per_element

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def mup_base(self) -> ModelConfig:
        """The base model of muP (mup's `set_base_shapes` base): this model at d_model = mup_base_width, with
        every width-derived size re-derived: d_head = mup_base_d_head if set, else base / H when d_head = d_model /
        H (the default, which the run id does not tell from an explicit equal value), else held fixed; the default
        SwiGLU width, else d_ff scaled by base / d_model. Fan-in ratios to it give each hidden matrix's rule."""
        base = self.mup_base_width or self.d_model
        derived_head = self.mup_base_d_head is None and self.d_head == self.d_model // self.n_heads
        default_ff = self.d_ff == replace(self, d_ff=None, mup_base_width=None, mup_base_d_head=None).d_ff
        return replace(self, d_model=base, mup_base_width=None, mup_base_d_head=None,
                       d_head=None if derived_head else self.mup_base_d_head or self.d_head,
                       d_ff=None if default_ff else max(1, round(self.d_ff * base / self.d_model)))

    @property
    def attention_scale(self) -> float:
        """The attention logits' multiplier: 1/sqrt(d_head) (sp); muP's 1/d_head, times sqrt(d_head at the base
        width), so that it equals sp's at the base width (Tensor Programs V, Sec. 6: q.k grows like d_head once
        q and k are correlated by training, not like sqrt(d_head))."""
        if self.parametrization == "sp":
            return 1 / math.sqrt(self.d_head)
        return math.sqrt(self.mup_base.d_head) / self.d_head


MLA_NORM_EPS = 1e-6  # DeepseekV3's two latent RMSNorms hard-code it; ours match, so the export is exact
PARAM_MATCH = ("none", "ffn")
GROUP_KEYS = ("name", "param_match")  # a model group's keys that name or resolve a shape rather than set a field
MATCH_TOLERANCE = 2.5e-3  # a rounded d_ff is kept when it misses the target count by at most 0.25 %


def non_embedding_params(cfg: ModelConfig) -> int:
    """DecoderLM.num_params(non_embedding=True) from the shape alone (the token embedding is a lookup)."""
    if cfg.vocab_size is None:
        raise ValueError("non_embedding_params counts the lm_head: give the shape its vocabulary (vocab_size)")
    d = cfg.d_model
    norms_and_mlp = cfg.n_layers * (2 * d + 3 * d * cfg.d_ff)  # two norms + SwiGLU per layer
    attn = sum(attention_type(cfg.attention).layer_params(cfg, G) for G in cfg.kv_heads_per_layer)
    return norms_and_mlp + attn + d + cfg.vocab_size * d  # + final norm + lm_head (tied or not)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token, nanoGPT/PaLM convention: 6*N + 12*L*H*d_head*T.

    N excludes the token-embedding table (a lookup). The attention term counts the H query heads,
    so it is the same for every G; fewer KV heads only shrink N through k_proj and v_proj. For MLA the
    head sizes are its own: 6*L*H*(d_nope + d_R + d_v)*T.
    """
    # q.k and p.v per head: 6 * (d_qk + d_v) = 12 * d_head, except MLA (trained expanded: d_nope + d_R, d_v).
    dims = cfg.qk_nope_dim + cfg.rope_dim + cfg.v_dim if cfg.attention == "mla" else 2 * cfg.d_head
    return 6 * non_embedding_params(cfg) + 6 * cfg.n_layers * cfg.n_heads * dims * seq_len


def matched_d_ff(cfg: ModelConfig) -> int:
    """The d_ff giving `cfg` the non-embedding parameter count of its G=H (MHA) twin, as Llama 2 and Shazeer
    widen the FFN of GQA/MQA models (and the GLA paper every GTA / MLA model: the twin is plain MHA). Rounded
    to a multiple of 32 when that lands within 0.25 % of the target, else of 8, else to the nearest integer
    (then within 3 * d_model * n_layers / 2 parameters)."""
    cfg = replace(cfg, vocab_size=cfg.vocab_size or 1)  # the lm_head is the same on both sides: any vocabulary
    mha = non_embedding_params(cfg.mha_twin)
    per_unit = 3 * cfg.d_model * cfg.n_layers  # parameters per unit of d_ff
    exact = cfg.d_ff + (mha - non_embedding_params(cfg)) / per_unit
    for multiple in (32, 8):
        d_ff = max(multiple, multiple * round(exact / multiple))
        if abs(d_ff - exact) * per_unit <= MATCH_TOLERANCE * mha:
            return d_ff
    return max(1, round(exact))


def build_shape(description: Mapping | None = None, **overrides) -> ModelConfig:
    """The one place a shape is built. `description` is a model group (conf/model/*.yaml, a bench or scaling
    preset), a stored shape (`ModelConfig.to_dict()`: checkpoints, LMModule's hyperparameters) or an HF config's
    translation; `overrides` replace its keys. `name` is dropped, `param_match=ffn` widens d_ff to the MHA twin's
    parameter count, the vocabulary defaults to None (the data sets it), and any other key that is not a field is
    refused by name, so a typo in a config never passes silently. A shape written out in code passes its fields
    as keywords alone."""
    d = {"vocab_size": None, **(description or {}), **overrides}
    match = d.pop("param_match", "none")
    d.pop("name", None)
    known = [f.name for f in fields(ModelConfig)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown model key(s) {', '.join(unknown)}; the model's keys are "
                         f"{', '.join(known + list(GROUP_KEYS))}")  # fmt: skip
    if match not in PARAM_MATCH:
        raise ValueError(f"param_match={match!r}; choose from {', '.join(PARAM_MATCH)}")
    shape = ModelConfig(**d)
    return replace(shape, d_ff=matched_d_ff(shape)) if match == "ffn" else shape
