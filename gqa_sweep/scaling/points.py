"""The runs a scaling fit sees: one point per completed run (N, G, size label, seed, loss), and the seed sigma.

Input is the runs DataFrame of gqa_sweep.store.results.load_runs (or anything with its columns): N is
n_params_non_embedding (the LM head included, as the store counts it), G is n_kv_heads, the size label is
model_name (ladder-s1 ... ladder-s5). Curves are keyed by G when every run has the same n_heads; with several H
they are keyed by the KV fraction G/H instead (so MHA is always 1 and a recommender can map onto other H).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

COLUMNS = ("n_params_non_embedding", "n_kv_heads", "n_heads", "val_loss", "seed", "model_name", "status")


@dataclass
class Points:
    df: pd.DataFrame  # columns: N, G, H, key, size, seed, loss, log_loss
    key: str  # "G" or "G/H"

    @property
    def keys(self) -> list:
        return sorted(self.df["key"].unique().tolist())

    @property
    def mha_key(self):
        return self.df.loc[self.df["G"] == self.df["H"], "key"].iloc[0] if (self.df["G"] == self.df["H"]).any() \
            else None

    @property
    def sizes(self) -> list[str]:
        """Size labels from smallest to largest (by the median N of the size's runs)."""
        return self.df.groupby("size")["N"].median().sort_values().index.tolist()

    def subset(self, sizes) -> Points:
        return Points(self.df[self.df["size"].isin(list(sizes))].reset_index(drop=True), self.key)

    def cell_means(self) -> pd.DataFrame:
        """One row per (size, key): mean N, mean loss, n seeds, the seed std of log loss."""
        g = self.df.groupby(["size", "key"], sort=False)
        out = g.agg(N=("N", "mean"), loss=("loss", "mean"), n=("loss", "size"), sd=("log_loss", "std")).reset_index()
        out["order"] = out["size"].map({s: i for i, s in enumerate(self.sizes)})
        return out.sort_values(["order", "key"]).reset_index(drop=True)

    def sigma(self) -> tuple[np.ndarray, float]:
        """Per-point seed sigma of log loss and the pooled one: pooled over G within a size when that gives >= 3
        degrees of freedom, else the pooled sigma of every (size, G) cell with >= 2 seeds."""
        df = self.df
        dev = df["log_loss"] - df.groupby(["size", "key"])["log_loss"].transform("mean")
        cells = df.groupby(["size", "key"]).size()
        dof_cell = (cells - 1).clip(lower=0)
        total_dof = int(dof_cell.sum())
        if total_dof == 0:
            raise ValueError("scaling fit: no (size, G) has 2 or more seeds, so the seed sigma is unknown; "
                             "run more seeds (e.g. -m ... seed=0,1) or pass sigma=")
        pooled = float(np.sqrt((dev**2).sum() / total_dof))
        per_size = {}
        for size, sub in df.groupby("size"):
            dof = int(dof_cell[size].sum())
            per_size[size] = float(np.sqrt((dev[sub.index] ** 2).sum() / dof)) if dof >= 3 else pooled
        return df["size"].map(per_size).to_numpy(float), pooled


def from_runs(runs: pd.DataFrame) -> Points:
    """Completed runs with a finite loss; ValueError naming what is missing."""
    missing = [c for c in COLUMNS if c not in runs.columns]
    if missing:
        raise ValueError(
            f"scaling: the runs table lacks {', '.join(missing)}; load it with gqa_sweep.store.results.load_runs"
        )
    df = runs[(runs["status"] == "completed") & np.isfinite(runs["val_loss"].astype(float))
              & (runs["val_loss"].astype(float) > 0)]
    if df.empty:
        raise ValueError("scaling: no completed run with a finite val_loss; run `gqa-sweep -m experiment=ladder` first")
    out = pd.DataFrame({
        "N": df["n_params_non_embedding"].astype(float).to_numpy(),
        "G": df["n_kv_heads"].astype(int).to_numpy(),
        "H": df["n_heads"].astype(int).to_numpy(),
        "size": df["model_name"].astype(str).to_numpy(),
        "seed": df["seed"].astype(int).to_numpy(),
        "loss": df["val_loss"].astype(float).to_numpy(),
    })
    out["log_loss"] = np.log(out["loss"])
    if out["H"].nunique() == 1:
        out["key"], key = out["G"], "G"
    else:
        out["key"], key = out["G"] / out["H"], "G/H"
    return Points(out, key)


def synthetic(E: float, A: float, alpha: float, n: np.ndarray, noise: float, seeds: int, rng,
              G: int = 1, H: int = 1) -> Points:
    """Points drawn from L = E + A N^-alpha with multiplicative Gaussian noise (the tests' known law)."""
    rows = []
    for i, N in enumerate(np.asarray(n, float)):
        for s in range(seeds):
            L = (E + A * N**-alpha) * np.exp(noise * rng.standard_normal())
            rows.append({"N": N, "G": G, "H": H, "size": f"s{i + 1}", "seed": s, "loss": L})
    df = pd.DataFrame(rows)
    df["log_loss"] = np.log(df["loss"])
    df["key"] = df["G"]
    return Points(df, "G")
