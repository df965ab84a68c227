"""The two deployment questions of `gqa-recommend`, on fitted curves (pure numpy; the CLI is recommend.py).

Curves are keyed by the KV fraction r = G/H (the ladder trains H = 4, so r in {1/4, 1/2, 1}); a target model
with H heads uses G = r * H. Every quantity is computed for the point estimate and for each bootstrap draw, so
each answer has an interval and a probability that its G is the best one.

(a) best_under_budget: the G (and N) with the lowest predicted loss whose weights + KV cache fit the memory
    budget at context T and batch b. Llama-like family: d_head 128, H = L = d_model / 128 (Llama-2/3-7B/8B:
    d 4096, H 32, L 32), d_ff ~8/3 d; N counted as the store counts it (config.non_embedding_params, the LM head
    included), weights = N + the token embedding, KV bytes = kv.kv_cache_bytes.
(b) cheapest_at_loss: the G with the lowest Cost-Optimal cost (Chen et al., arXiv 2503.09579)
        Z = lam * M^a + (1 - lam) * C^b,   lam 0.9, a 1/2, b 1/3,
        C = 2 N + 4 T L d_head H   (FLOPs per token),   M = N + 2 T L d_head G   (values held per token),
    at a target loss L*, N being what the curve of that G/H needs to reach L*: N = (A / (L* - E))^(1/alpha);
    with the family, L = H = d / 128 follow N through N = L (10 + 2 r) d^2 + V d (attention 2 d^2 + 2 r d^2,
    SwiGLU 8 d^2 per layer) solved for d.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from gqa_sweep.model.kv import divisors, dtype_bytes, kv_cache_bytes
from gqa_sweep.model.shape import ModelConfig, non_embedding_params
from gqa_sweep.scaling.ladder import member

LAMBDA, A_EXP, B_EXP = 0.9, 0.5, 1.0 / 3.0
D_HEAD = 128


@dataclass
class Curves:
    """E, A, alpha per KV fraction r = G/H; index 0 is the point estimate, 1.. the bootstrap draws."""

    E: dict[Fraction, np.ndarray]
    A: dict[Fraction, np.ndarray]
    alpha: dict[Fraction, np.ndarray]

    @property
    def ratios(self) -> list[Fraction]:
        return sorted(self.E)

    def loss(self, r: Fraction, n) -> np.ndarray:
        return self.E[r] + self.A[r] * np.asarray(n, float) ** -self.alpha[r]

    def n_for_loss(self, r: Fraction, target: float) -> np.ndarray:
        """N reaching `target` per draw; inf where target <= E (unreachable at any size)."""
        gap = target - self.E[r]
        with np.errstate(divide="ignore", invalid="ignore"):
            n = (self.A[r] / gap) ** (1.0 / self.alpha[r])
        return np.where(gap > 0, n, np.inf)

    def e_interval(self, r: Fraction) -> tuple[float, float]:
        lo, hi = np.percentile(self.E[r][1:], [2.5, 97.5]) if len(self.E[r]) > 1 else (self.E[r][0],) * 2
        return float(lo), float(hi)


def ratio(G: int, H: int) -> Fraction:
    return Fraction(G, H)


def check_ratio(curves: Curves, G: int, H: int) -> str | None:
    """None if G/H was trained, else the one-line reason."""
    r = ratio(G, H)
    if r in curves.ratios:
        return None
    trained = ", ".join(str(x) for x in curves.ratios)
    return f"G={G} of H={H} (G/H = {r}) was not trained (trained G/H: {trained}); the fit cannot say anything about it"


def cost_z(n, T: int, n_layers, n_heads, n_kv, d_head: int = D_HEAD) -> np.ndarray:
    c = 2 * np.asarray(n, float) + 4.0 * T * n_layers * d_head * n_heads
    m = np.asarray(n, float) + 2.0 * T * n_layers * d_head * n_kv
    return LAMBDA * m**A_EXP + (1 - LAMBDA) * c**B_EXP


def family_d_model(n, r: Fraction, vocab: int) -> np.ndarray:
    """d solving N = (d / 128) (10 + 2 r) d^2 + V d (continuous Llama-like family), per element of n."""
    n = np.asarray(n, float)
    coef = (10 + 2 * float(r)) / D_HEAD
    lo, hi = np.full(n.shape, 1.0), np.full(n.shape, 1e6)
    for _ in range(200):  # bisection: N(d) is increasing
        mid = 0.5 * (lo + hi)
        big = coef * mid**3 + vocab * mid > n
        hi, lo = np.where(big, mid, hi), np.where(big, lo, mid)
    return np.where(np.isfinite(n), 0.5 * (lo + hi), np.inf)


def family_member(k: int, G: int, vocab: int, seq_len: int) -> tuple[ModelConfig, int]:
    """Llama-like member k: d 128 k, H = L = k; (config, non-embedding N as the store counts it)."""
    cfg = member(k, D_HEAD * k, G, n_heads=k, d_head=D_HEAD, vocab=vocab, block=seq_len)
    return cfg, non_embedding_params(cfg)


def memory_bytes(cfg: ModelConfig, n: int, seq_len: int, batch: int, weight_dtype: str, kv_dtype: str) -> int:
    weights = (n + cfg.vocab_size * cfg.d_model) * dtype_bytes(weight_dtype)  # + the untied token embedding
    return int(np.ceil(weights)) + kv_cache_bytes(cfg.n_kv_heads, cfg.d_head, cfg.n_layers, seq_len, batch,
                                                  dtype_bytes(kv_dtype))


@dataclass
class Answer:
    G: int
    H: int
    n_params: float
    loss: float
    interval: tuple[float, float]
    p_best: float
    table: list[dict]  # one row per candidate G
    flags: list[str]


def _p_best(values: dict, chosen) -> float:
    """Share of bootstrap draws (index 1..) in which `chosen` has the lowest value."""
    keys = list(values)
    stack = np.stack([values[k][1:] for k in keys])
    if stack.shape[1] == 0:
        return float("nan")
    return float(np.mean(np.array(keys)[np.argmin(stack, axis=0)] == chosen))


def best_under_budget(curves: Curves, budget: int, seq_len: int, batch: int, weight_dtype: str = "bf16",
                      kv_dtype: str = "bf16", vocab: int = 32000, max_k: int = 128,
                      shape: tuple[int, int, int] | None = None, d_head: int = D_HEAD) -> Answer:
    """(a). shape = (n_layers, d_model, n_heads) fixes the model and compares its G; else the family."""
    rows, losses = [], {}
    if shape is not None:
        L, d, H = shape
        members = [(member(L, d, G, n_heads=H, d_head=d_head, vocab=vocab, block=seq_len), G, H)
                   for G in divisors(H)]
    else:
        members = None
    for r in curves.ratios:
        best = None
        candidates = ([(c, G, H) for c, G, H in members if ratio(G, H) == r] if members is not None else
                      [(family_member(k, int(r * k), vocab, seq_len)[0], int(r * k), k)
                       for k in range(1, max_k + 1) if (r * k).denominator == 1])
        for cfg, G, H in candidates:
            n = non_embedding_params(cfg)
            fits = memory_bytes(cfg, n, seq_len, batch, weight_dtype, kv_dtype) <= budget
            if fits and (best is None or n > best[1]):
                best = (cfg, n, G, H)
        if best is None:
            continue
        cfg, n, G, H = best
        loss = curves.loss(r, n)
        losses[r] = loss
        rows.append({"G/H": str(r), "G": G, "H": H, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "N": n,
                     "memory_bytes": memory_bytes(cfg, n, seq_len, batch, weight_dtype, kv_dtype),
                     "loss": float(loss[0]), "loss_lo": float(np.percentile(loss[1:], 2.5)) if len(loss) > 1
                     else float(loss[0]), "loss_hi": float(np.percentile(loss[1:], 97.5)) if len(loss) > 1
                     else float(loss[0])})
    if not rows:
        raise ValueError(f"no model with a trained G/H fits {budget:,} bytes at T={seq_len}, batch {batch}; "
                         "raise --memory or lower --batch / --context")
    chosen = min(rows, key=lambda row: row["loss"])
    r = Fraction(chosen["G/H"])
    return Answer(chosen["G"], chosen["H"], chosen["N"], chosen["loss"], (chosen["loss_lo"], chosen["loss_hi"]),
                  _p_best(losses, r), rows, [])


def cheapest_at_loss(curves: Curves, target: float, seq_len: int, vocab: int = 32000,
                     shape: tuple[int, int] | None = None, d_head: int = D_HEAD) -> Answer:
    """(b). shape = (n_layers, n_heads) fixes the attention shape (with d_head; N still follows the curve); else
    the Llama-like family (d_head 128)."""
    rows, costs, flags = [], {}, []
    for r in curves.ratios:
        lo, hi = curves.e_interval(r)
        if target <= hi:
            flags.append(f"G/H = {r}: target loss {target:g} is at or below the 95 % interval of E "
                         f"[{lo:.4g}, {hi:.4g}]: unreachable or unreliable, left out")
            continue
        n = curves.n_for_loss(r, target)
        if shape is None:
            d = family_d_model(n, r, vocab)
            L = H = d / D_HEAD
        else:
            L, H = shape
            if (r * H).denominator != 1:
                flags.append(f"G/H = {r}: n_heads={H} has no G with that fraction, left out")
                continue
        z = cost_z(n, seq_len, L, H, H * float(r), d_head if shape is not None else D_HEAD)
        costs[r] = z
        rows.append({"G/H": str(r), "N": float(n[0]), "Z": float(z[0]),
                     "Z_lo": float(np.nanpercentile(z[1:], 2.5)) if len(z) > 1 else float(z[0]),
                     "Z_hi": float(np.nanpercentile(z[1:], 97.5)) if len(z) > 1 else float(z[0]),
                     "H": float(np.atleast_1d(H)[0]), "n_layers": float(np.atleast_1d(L)[0])})
    if not rows:
        raise ValueError(f"target loss {target:g} is at or below E for every trained G/H; choose a higher --loss "
                         f"(E intervals: {'; '.join(flags)})")
    ref = Fraction(1, 4)
    for row in rows:
        r = Fraction(row["G/H"])
        if ref in costs:
            ratio_draws = costs[r] / costs[ref]
            row["vs_H/4"] = float(ratio_draws[0])
            row["vs_H/4_lo"], row["vs_H/4_hi"] = (np.nanpercentile(ratio_draws[1:], [2.5, 97.5]).tolist()
                                                  if len(ratio_draws) > 1 else [row["vs_H/4"]] * 2)
    chosen = min(rows, key=lambda row: row["Z"])
    r = Fraction(chosen["G/H"])
    H = chosen["H"]
    return Answer(round(float(r) * H) if shape else -1, round(H), chosen["N"], chosen["Z"],
                  (chosen["Z_lo"], chosen["Z_hi"]), _p_best(costs, r), rows, flags)
