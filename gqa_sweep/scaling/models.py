"""The joint fits across G: L_G(N) = E_G + A_G N^-alpha_G with E and alpha shared or not (M0 ... M3).

M0  shared E and alpha, per-G A. Then A_G = A_MHA * s_G^-alpha: G behaves as if the model had s_G times its
    parameters (s_G < 1: the KV heads G removed cost more than their parameter count), s_MHA = 1.
M1  per-G E (G moves the irreducible loss), shared alpha.
M2  per-G alpha (G changes how fast the loss falls with N), shared E.
M3  every G on its own (E, A, alpha per G): the independent per-G fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gqa_sweep.scaling import fit as fitting
from gqa_sweep.scaling.laws import MODELS, Law, group_law, per_group, predict_group
from gqa_sweep.scaling.points import Points

WEIGHTED = "wls"


@dataclass
class ModelFit:
    points: Points
    model: str
    objective: str
    law: Law
    fit: fitting.Fit
    sigma: np.ndarray  # per-point seed sigma of log loss (WLS weights 1/sigma^2; the bootstrap's noise)
    pooled_sigma: float

    @property
    def theta(self) -> np.ndarray:
        return self.fit.theta

    def predict(self, key, n, theta: np.ndarray | None = None) -> np.ndarray:
        """L of curve `key` at N = n: (m,) for the point estimate, (B, m) for a stack of theta."""
        th = self.theta if theta is None else theta
        out = predict_group(self.law, th, key, np.atleast_1d(n))
        return out[0] if theta is None else out

    def at_bound(self, kind: str, key) -> bool:
        """Whether the point estimate of `kind` (e, a, alpha) for curve `key` sits on its L-BFGS-B bound (E -> 0
        when the sizes show no curvature: E is then not identified by the data, only bounded)."""
        lo, hi = fitting.BOUNDS[kind]
        v = float(per_group(self.law, self.theta, kind, key)[0])
        return v <= lo + 1e-6 or v >= hi - 1e-6

    def params(self, theta: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """E, A, alpha per key and s_G (M0 form: (A_MHA / A_G)^(1/alpha)), each (B,)."""
        th = np.atleast_2d(self.theta if theta is None else theta)
        mha = self.points.mha_key
        out = {}
        for k in self.points.keys:
            e, a, al = (per_group(self.law, th, kind, k) for kind in ("e", "a", "alpha"))
            out[f"E[{k}]"], out[f"A[{k}]"], out[f"alpha[{k}]"] = np.exp(e), np.exp(a), al
        if mha is not None:
            for k in self.points.keys:
                # s_G is defined by the shared-alpha form; with per-G alpha it is taken at MHA's alpha
                al = per_group(self.law, th, "alpha", mha)
                out[f"s[{k}]"] = np.exp((per_group(self.law, th, "a", mha) - per_group(self.law, th, "a", k)) / al)
        return out


def fit_model(points: Points, model: str = "M0", objective: str = WEIGHTED, grid: dict | None = None) -> ModelFit:
    if model not in MODELS:
        raise ValueError(f"unknown scaling model {model!r}; choose one of {', '.join(MODELS)}")
    df = points.df
    n_sizes = df["size"].nunique()
    if n_sizes < 3:
        raise ValueError(f"scaling fit {model}: {n_sizes} size(s) cannot fix E, A and alpha; train >= 3 sizes "
                         "(experiment=ladder has 5)")
    law = group_law(np.log(df["N"].to_numpy()), df["key"].to_numpy(), model, points.keys)
    sigma, pooled = _sigma(points)
    w = 1.0 / sigma**2 if objective == WEIGHTED else np.ones(len(df))
    f = fitting.fit(law, df["log_loss"].to_numpy(), w / w.mean(), objective, grid=grid)
    return ModelFit(points, model, objective, law, f, sigma, pooled)


def _sigma(points: Points) -> tuple[np.ndarray, float]:
    try:
        return points.sigma()
    except ValueError:
        # one seed per cell (e.g. the synthetic checks): equal weights, noise from the fit's residuals later
        return np.ones(len(points.df)), float("nan")
