"""Scaling laws in log space: log L = LSE(term_1, ..., term_k), each term `intercept - slope * feature`.

Epoch AI's form (Besiroglu et al., arXiv 2404.10102): L = E + A N^-alpha (+ B D^-beta) is fitted as
    log L = LSE(a - alpha log N, b - beta log D, e),   A = exp(a), B = exp(b), E = exp(e),
which keeps every term positive and the residuals relative. A `Law` is that sum of terms with its parameters
shared or not across groups (here: the G of each run), so one vectorised value-and-gradient serves the per-G
fits, the joint fits with a shared E (the nested models M0/M1/M2) and the Chinchilla L(N, D) check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Parameter kinds: the grid of starts and the bounds are given per kind.
SLOPES = ("alpha", "beta")


@dataclass(frozen=True)
class Term:
    intercept: np.ndarray  # (n,) parameter index of each point's intercept
    slope: np.ndarray | None  # (n,) parameter index of each point's slope, None for a constant term (E)
    feature: np.ndarray | None  # (n,) log N or log D of each point


@dataclass
class Law:
    """A sum-of-power-laws model on n points; parameters are named `kind` or `kind[group]`."""

    names: list[str]
    kinds: list[str]
    terms: list[Term]
    groups: list | None = None  # group labels (G values) in parameter order, for per-group names
    model: str = ""  # M0 / M1 / M2 / M3 / ND: what is shared

    @property
    def n_params(self) -> int:
        return len(self.names)

    def log_predict(self, theta: np.ndarray) -> np.ndarray:
        """theta (B, p) -> log L (B, n)."""
        return self._forward(np.atleast_2d(theta))[0]

    def value_and_weights(self, theta: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        return self._forward(np.atleast_2d(theta))

    def _forward(self, theta):
        ts = [self._term(theta, t) for t in self.terms]
        top = np.maximum.reduce(ts)
        ex = [np.exp(t - top) for t in ts]
        s = sum(ex)
        return top + np.log(s), [e / s for e in ex]

    @staticmethod
    def _term(theta, t: Term):
        v = theta[:, t.intercept]
        return v if t.slope is None else v - theta[:, t.slope] * t.feature

    def grad(self, theta: np.ndarray, dpred: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
        """d objective / d theta (B, p) from d objective / d log L (B, n) and the terms' softmax weights."""
        theta = np.atleast_2d(theta)
        g = np.zeros_like(theta)
        for t, w in zip(self.terms, weights):
            gw = dpred * w
            g += gw @ self._onehot(t.intercept)
            if t.slope is not None:
                g -= (gw * t.feature) @ self._onehot(t.slope)
        return g

    def jacobian(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log L (B, n), d log L / d theta (B, n, p)) for the Gauss-Newton solver."""
        theta = np.atleast_2d(theta)
        pred, weights = self._forward(theta)
        J = np.zeros((*pred.shape, self.n_params))
        for t, w in zip(self.terms, weights):
            J += w[:, :, None] * self._onehot(t.intercept)[None]
            if t.slope is not None:
                J -= (w * t.feature)[:, :, None] * self._onehot(t.slope)[None]
        return pred, J

    def _onehot(self, idx: np.ndarray) -> np.ndarray:
        """(n, p) 0/1 matrix sending each point's value to its parameter (cached: a matmul scatters fast)."""
        cache = self.__dict__.setdefault("_onehots", {})
        key = id(idx)
        if key not in cache:
            m = np.zeros((len(idx), self.n_params))
            m[np.arange(len(idx)), idx] = 1.0
            cache[key] = m
        return cache[key]

    def index(self, name: str) -> int:
        return self.names.index(name)


MODELS = {
    # name: (E per group, alpha per group); A is always per group
    "M0": (False, False),  # shared E and alpha: G costs a constant parameter multiplier s_G
    "M1": (True, False),   # per-G E: G changes the irreducible loss
    "M2": (False, True),   # per-G alpha: G changes how fast loss falls with N
    "M3": (True, True),    # every G on its own (independent per-G fits)
}


def group_law(log_n: np.ndarray, group: np.ndarray, model: str = "M0", groups: list | None = None) -> Law:
    """L = E_g + A_g N^-alpha_g over the points' groups, sharing E and alpha as `model` says (MODELS)."""
    if model not in MODELS:
        raise ValueError(f"unknown scaling model {model!r}; choose one of {', '.join(MODELS)}")
    groups = sorted(set(group.tolist())) if groups is None else list(groups)
    gi = np.array([groups.index(g) for g in group.tolist()])
    per_e, per_alpha = MODELS[model]
    names, kinds = [], []

    def add(kind: str, per_group: bool) -> np.ndarray:
        start = len(names)
        if per_group:
            names.extend(f"{kind}[{g}]" for g in groups)
            kinds.extend([kind] * len(groups))
            return start + gi
        names.append(kind)
        kinds.append(kind)
        return np.full(len(gi), start)

    e = add("e", per_e)
    a = add("a", True)
    alpha = add("alpha", per_alpha)
    terms = [Term(a, alpha, np.asarray(log_n, float)), Term(e, None, None)]
    return Law(names, kinds, terms, groups, model)


def nd_law(log_n: np.ndarray, log_d: np.ndarray) -> Law:
    """Chinchilla's L(N, D) = E + A N^-alpha + B D^-beta, one group."""
    n = len(log_n)
    idx = [np.full(n, i) for i in range(5)]
    names = ["a", "alpha", "b", "beta", "e"]
    terms = [Term(idx[0], idx[1], np.asarray(log_n, float)), Term(idx[2], idx[3], np.asarray(log_d, float)),
             Term(idx[4], None, None)]
    return Law(names, list(names), terms, None, "ND")


def natural(law: Law, theta: np.ndarray) -> dict[str, np.ndarray]:
    """exp() of the log-space intercepts: {'E': ..., 'A[g]': ..., 'alpha[g]': ...} for theta (B, p)."""
    theta = np.atleast_2d(theta)
    out = {}
    for j, (name, kind) in enumerate(zip(law.names, law.kinds)):
        label = name if kind in SLOPES else name.replace(kind, kind.upper(), 1)
        out[label] = theta[:, j] if kind in SLOPES else np.exp(theta[:, j])
    return out


def per_group(law: Law, theta: np.ndarray, kind: str, g) -> np.ndarray:
    """A parameter of group g whether it is shared or per group: theta (B, p) -> (B,)."""
    theta = np.atleast_2d(theta)
    name = f"{kind}[{g}]" if f"{kind}[{g}]" in law.names else kind
    return theta[:, law.index(name)]


def predict_group(law: Law, theta: np.ndarray, g, n: np.ndarray) -> np.ndarray:
    """L at parameter counts n (m,) for group g: (B, m), for a group_law."""
    e, a, alpha = (per_group(law, theta, k, g)[:, None] for k in ("e", "a", "alpha"))
    logn = np.log(np.asarray(n, float))[None, :]
    return np.exp(np.logaddexp(a - alpha * logn, e))
