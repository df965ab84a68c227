"""Validation on sizes the fit never saw: hold out the largest size, and the progressive check (Bian et al. 2025).

For each G at the held-out size: predicted vs measured loss (mean over its seeds; absolute relative error),
whether the measurement lies inside the 95 % prediction interval (curve draws of the bootstrap + the seed noise
of a mean of that many runs), predicted vs measured gap to MHA, and two no-fit baselines: "same loss as the
previous size" (for the loss) and "constant gap" (the previous size's gap to MHA, for the gap).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gqa_sweep.scaling.bootstrap import DEFAULT_DRAWS, bootstrap
from gqa_sweep.scaling.laws import MODELS
from gqa_sweep.scaling.models import WEIGHTED, fit_model
from gqa_sweep.scaling.points import Points

USEFUL = 0.02  # the bar for a held-out prediction: within 2 % of the measured loss (Choshen et al.: ~4 %)


def _gap(loss: float, mha: float) -> float:
    return 100.0 * (loss / mha - 1.0)


def holdout(points: Points, model: str = "M0", objective: str = WEIGHTED, draws: int = DEFAULT_DRAWS,
            target: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Fit every size below `target` (default: the largest), predict `target`; one row per G."""
    sizes = points.sizes
    target = sizes[-1] if target is None else target
    k = sizes.index(target)
    train = points.subset(sizes[:k])
    mf = fit_model(train, model, objective)
    boot = bootstrap(mf, draws, seed=seed)
    rng = np.random.default_rng(seed + 1)
    cells = points.cell_means()
    here = cells[cells["size"] == target].set_index("key")
    prev = cells[cells["size"] == sizes[k - 1]].set_index("key")
    mha = points.mha_key
    pred = {g: float(mf.predict(g, [here.loc[g, "N"]])[0]) for g in here.index}
    draws_ = {g: boot.predictive(g, [here.loc[g, "N"]], int(here.loc[g, "n"]), rng)[:, 0] for g in here.index}
    rows = []
    for g in here.index:
        meas = float(here.loc[g, "loss"])
        lo, hi = boot.interval(draws_[g])
        row = {"model": model, "objective": objective, "size": target, "G": g, "N": float(here.loc[g, "N"]),
               "n_seeds": int(here.loc[g, "n"]), "fitted_sizes": k, "measured": meas, "predicted": pred[g],
               "pi_lo": lo, "pi_hi": hi, "abs_rel_err": abs(pred[g] / meas - 1), "inside_pi": lo <= meas <= hi,
               "prev_size_err": abs(float(prev.loc[g, "loss"]) / meas - 1) if g in prev.index else np.nan}
        row["beats_prev_size"] = row["abs_rel_err"] < row["prev_size_err"]
        if mha is not None and mha in here.index and mha in prev.index:
            m_meas = float(here.loc[mha, "loss"])
            row["gap_measured"] = _gap(meas, m_meas)
            row["gap_predicted"] = _gap(pred[g], pred[mha])
            gap_draws = 100 * (boot.predict(g, [row["N"]])[:, 0] / boot.predict(mha, [here.loc[mha, "N"]])[:, 0] - 1)
            row["gap_lo"], row["gap_hi"] = boot.interval(gap_draws)
            row["gap_const"] = _gap(float(prev.loc[g, "loss"]), float(prev.loc[mha, "loss"]))
            fit_err = abs(row["gap_predicted"] - row["gap_measured"])
            row["beats_const_gap"] = bool(fit_err < abs(row["gap_const"] - row["gap_measured"])) if g != mha else None
        row["within_2pct"] = row["abs_rel_err"] <= USEFUL
        rows.append(row)
    return pd.DataFrame(rows)


def progressive(points: Points, model: str = "M0", objective: str = WEIGHTED, min_sizes: int = 3) -> pd.DataFrame:
    """Fit the first k sizes, predict size k+1, for every k >= min_sizes: the point error per G (no bootstrap)."""
    sizes = points.sizes
    cells = points.cell_means()
    rows = []
    for k in range(min_sizes, len(sizes)):
        mf = fit_model(points.subset(sizes[:k]), model, objective)
        nxt = cells[cells["size"] == sizes[k]]
        for _, c in nxt.iterrows():
            p = float(mf.predict(c["key"], [c["N"]])[0])
            rows.append({"model": model, "objective": objective, "fitted": k, "predicted_size": sizes[k],
                         "G": c["key"], "measured": c["loss"], "predicted": p, "abs_rel_err": abs(p / c["loss"] - 1)})
    return pd.DataFrame(rows)


def compare_models(points: Points, objectives=(WEIGHTED, "huber"), models=tuple(MODELS)) -> pd.DataFrame:
    """Held-out error of every model and objective: mean abs relative error over the progressive folds (the last
    fold is the hold-out of the largest size) and on the largest size alone. The winner has the lowest mean."""
    if len(points.sizes) < 4:
        raise ValueError(f"scaling: {len(points.sizes)} size(s); a held-out check needs >= 4 sizes (fit >= 3 sizes, "
                         "predict the next): run experiment=ladder (5 sizes)")
    rows = []
    for obj in objectives:
        for m in models:
            try:
                prog = progressive(points, m, obj)
            except ValueError:
                continue
            last = prog[prog["fitted"] == prog["fitted"].max()]
            rows.append({"model": m, "objective": obj, "mean_err_progressive": prog["abs_rel_err"].mean(),
                         "max_err_largest": last["abs_rel_err"].max(), "mean_err_largest": last["abs_rel_err"].mean(),
                         "folds": prog["fitted"].nunique()})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["winner"] = out["mean_err_progressive"] == out["mean_err_progressive"].min()
    return out
