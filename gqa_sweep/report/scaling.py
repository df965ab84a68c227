"""`gqa-report --scaling`: scaling laws per G fitted on a size ladder, validated on the held-out largest size,
and extrapolated (with intervals, and flagged) to 100M, 1B and 7B parameters.

Tables (raw numbers as CSV, display as Markdown/LaTeX, registered in report.tables like every other table):
  scaling_models       held-out error of M0-M3 x {wls, huber}: mean abs relative error over the progressive folds
  scaling_fit          the winning model's E, A_G, alpha_G, s_G with 95 % bootstrap intervals
  scaling_holdout      per model and G: predicted vs measured loss at the held-out size, PI, gap, baselines
  scaling_progressive  fit the first k sizes, predict k+1 (the winning model)
  scaling_extrapolation predicted gap vs MHA at 100M / 1B / 7B, with the published anchors beside 1B
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gqa_sweep.report.groups import split
from gqa_sweep.scaling.bootstrap import DEFAULT_DRAWS, bootstrap
from gqa_sweep.scaling.holdout import USEFUL, compare_models, holdout, progressive
from gqa_sweep.scaling.laws import MODELS
from gqa_sweep.scaling.models import fit_model
from gqa_sweep.scaling.points import from_runs

TARGETS = (1e8, 1e9, 7e9)
UNRELIABLE_PAST = 10.0  # extrapolation factor beyond the largest fitted N past which a number is flagged
# Published gaps vs MHA at scale (issue 23): Cross-Layer Attention (arXiv 2405.12981) at 1B; Cost-Optimal GQA
# (arXiv 2503.09579) 1-vs-32-head gap between 470M and 1.2B.
ANCHORS_1B = "CLA 1B: MQA +1.13 %, GQA-4 +0.61 %; Cost-Optimal 1 vs 32 heads: 7.1 % (470M) → 5.9 % (1.2B)"

TITLES = {
    "scaling_models": "Scaling models M0-M3 compared on held-out error",
    "scaling_fit": "Scaling law per G: L_G(N) = E_G + A_G · N^-α_G (95 % bootstrap intervals)",
    "scaling_holdout": "Held-out largest size: predicted vs measured loss per G",
    "scaling_progressive": "Progressive check: fit the first k sizes, predict size k+1",
    "scaling_extrapolation": "Predicted loss gap vs MHA at scale (extrapolated)",
    "scaling_compare": "Ladders side by side: s_G and held-out error of each one's winning model",
}
NOTES = {
    "scaling_compare": (
        "Each ladder (a group of runs that differ beyond seed, G and size: sp with one lr per size vs muP with "
        "each G's transferred lr, say) fitted apart, by its own winning model. s_G: [95 % bootstrap interval]; "
        "held-out error: |predicted / measured − 1| on the largest size, fitted on the others; progressive: the "
        "winner's mean over the folds."
    ),
    "scaling_models": (
        "M0: shared E and α, per-G A (G = a constant parameter multiplier s_G); M1: per-G E; M2: per-G α; "
        "M3: every G alone. Fitted in log space (LSE form) by L-BFGS-B from a grid of starts; wls weights 1/σ² "
        "with σ the seed std of log loss at each size; huber: Epoch AI's summed Huber loss, δ = 1e-3. Error: "
        "mean |predicted / measured − 1| over the progressive folds (fit sizes 1..k, predict k+1; the last fold "
        "is the held-out largest size) and on the largest size alone; the winner has the lowest mean, not R²."
    ),
    "scaling_fit": (
        "N: non-embedding parameters (the LM head included). Intervals: 2.5-97.5 percentiles of the bootstrap "
        "refits (parametric: each run redrawn at its size's seed σ, σ itself redrawn from its χ² spread). "
        "s_G = (A_MHA / A_G)^(1/α): G acts as s_G times the parameters of MHA (< 1: costs quality). "
        "⚠ at bound: the estimate sits on the optimiser's bound (E = e^-10 ≈ 0: the sizes show no curvature, so the "
        "data bound E from above only, and α and A trade against it; Choshen et al.: A and α are strongly coupled)."
    ),
    "scaling_holdout": (
        "Fit on every size but the largest, predict it. measured: mean over its seeds. 95 % PI: bootstrap curve "
        "draws plus the seed noise of a mean of that many runs. gap: 100 · (L_G / L_MHA − 1) %. Baselines: "
        "'prev size' predicts the previous size's loss, 'const gap' the previous size's gap; 'beats' = smaller "
        f"error than the baseline. ✓ within {USEFUL:.0%}: |error| ≤ {USEFUL:.0%}."
    ),
    "scaling_progressive": "Point predictions of the winning model; error = |predicted / measured − 1|.",
    "scaling_extrapolation": (
        "Predicted gap 100 · (L_G / L_MHA − 1) % at the same N for every G, with its 95 % bootstrap interval, from "
        "the winning model fitted on every size. "
        f"k = N / largest fitted N; ⚠ past {UNRELIABLE_PAST:g}x: the hold-out validates only the step from the "
        "second-largest to the largest size, so these numbers are shapes of the fit, not measurements."
    ),
}


def _pm(x: float, lo: float, hi: float, fmt: str = ".3g") -> str:
    return f"{x:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _mark(b) -> str:
    return "—" if b is None or (isinstance(b, float) and np.isnan(b)) else ("✓" if b else "✗")


def scaling_tables(runs: pd.DataFrame, draws: int = DEFAULT_DRAWS, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every scaling table of one ladder; ValueError when the runs are several computations (report/groups.py)."""
    groups = split(runs)
    if len(groups) > 1:
        raise ValueError(f"scaling: these runs are {len(groups)} different computations (they differ in "
                         f"{', '.join(groups[0].keys)}); fit one at a time: gqa_sweep.report.groups.split(runs)")
    points = from_runs(runs)
    models = compare_models(points)
    best = models[models["winner"]].iloc[0]
    model, objective = str(best["model"]), str(best["objective"])
    mf = fit_model(points, model, objective)
    boot = bootstrap(mf, draws, seed=seed)
    tables = {"scaling_models": models, "scaling_fit": _fit_table(mf, boot)}
    tables["scaling_holdout"] = pd.concat([holdout(points, m, objective, draws, seed=seed) for m in MODELS],
                                          ignore_index=True)
    tables["scaling_progressive"] = progressive(points, model, objective)
    tables["scaling_extrapolation"] = _extrapolation(mf, boot)
    return tables


def _fit_table(mf, boot) -> pd.DataFrame:
    point, draws = mf.params(), boot.params()
    rows = []
    for g in mf.points.keys:
        row = {"model": mf.model, "objective": mf.objective, "G": g,
               "E_at_bound": mf.at_bound("e", g), "alpha_at_bound": mf.at_bound("alpha", g)}
        for p in ("E", "A", "alpha", "s"):
            name = f"{p}[{g}]"
            if name in point:
                lo, hi = boot.interval(draws[name])
                row.update({p: float(point[name][0]), f"{p}_lo": lo, f"{p}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def _extrapolation(mf, boot) -> pd.DataFrame:
    mha = mf.points.mha_key
    n_max = float(mf.points.df["N"].max())
    rows = []
    for N in TARGETS:
        base = boot.predict(mha, [N])[:, 0]
        for g in mf.points.keys:
            pred = float(mf.predict(g, [N])[0] / mf.predict(mha, [N])[0] - 1) * 100
            lo, hi = boot.interval(100 * (boot.predict(g, [N])[:, 0] / base - 1))
            k = N / n_max
            rows.append({"N": N, "G": g, "gap_pct": pred, "gap_lo": lo, "gap_hi": hi,
                         "loss": float(mf.predict(g, [N])[0]), "k": k, "unreliable": k > UNRELIABLE_PAST,
                         "anchor": ANCHORS_1B if N == 1e9 and g == mf.points.keys[0] else ""})
    return pd.DataFrame(rows)


def _si(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def display_models(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": t["model"], "objective": t["objective"],
        "mean err (progressive)": t["mean_err_progressive"].map(lambda x: f"{100 * x:.2f} %"),
        "mean err (largest)": t["mean_err_largest"].map(lambda x: f"{100 * x:.2f} %"),
        "max err (largest)": t["max_err_largest"].map(lambda x: f"{100 * x:.2f} %"),
        "folds": t["folds"], "winner": t["winner"].map(lambda b: "**winner**" if b else ""),
    })


def display_fit(t: pd.DataFrame) -> pd.DataFrame:
    out = {"model": t["model"] + " / " + t["objective"], "G": t["G"]}
    for p, label in (("E", "E"), ("A", "A_G"), ("alpha", "α_G"), ("s", "s_G")):
        if p in t:
            out[label] = [_pm(r[p], r[f"{p}_lo"], r[f"{p}_hi"]) + (" ⚠ at bound" if r.get(f"{p}_at_bound") else "")
                          for _, r in t.iterrows()]
    return pd.DataFrame(out)


def display_holdout(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": t["model"], "G": t["G"], "N": t["N"].map(_si), "seeds": t["n_seeds"],
        "measured": t["measured"].map(lambda x: f"{x:.4f}"), "predicted": t["predicted"].map(lambda x: f"{x:.4f}"),
        "error": t["abs_rel_err"].map(lambda x: f"{100 * x:.2f} %"),
        "95 % PI": [f"[{a:.4f}, {b:.4f}] {_mark(i)}" for a, b, i in zip(t["pi_lo"], t["pi_hi"], t["inside_pi"])],
        "gap meas / pred": [f"{m:+.2f} / {p:+.2f} % [{lo:+.2f}, {hi:+.2f}]" for m, p, lo, hi in
                            zip(t["gap_measured"], t["gap_predicted"], t["gap_lo"], t["gap_hi"])],
        "beats prev size": t["beats_prev_size"].map(_mark), "beats const gap": t["beats_const_gap"].map(_mark),
        f"within {USEFUL:.0%}": t["within_2pct"].map(_mark),
    })


def display_progressive(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "fitted sizes": t["fitted"], "predicted size": t["predicted_size"], "G": t["G"],
        "measured": t["measured"].map(lambda x: f"{x:.4f}"), "predicted": t["predicted"].map(lambda x: f"{x:.4f}"),
        "error": t["abs_rel_err"].map(lambda x: f"{100 * x:.2f} %"),
    })


def display_extrapolation(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "N": t["N"].map(_si), "G": t["G"],
        "gap vs MHA": [_pm(g, lo, hi, "+.2f") + " %" for g, lo, hi in zip(t["gap_pct"], t["gap_lo"], t["gap_hi"])],
        "extrapolated": [f"{k:,.0f}x beyond the largest fitted size" + (" ⚠ unreliable" if u else "")
                         for k, u in zip(t["k"], t["unreliable"])],
        "published anchor": t["anchor"],
    })


DISPLAY = {"scaling_models": display_models, "scaling_fit": display_fit, "scaling_holdout": display_holdout,
           "scaling_progressive": display_progressive, "scaling_extrapolation": display_extrapolation,
           "scaling_compare": lambda t: t}  # built for display (scaling_compare)


def verdict(tables: dict[str, pd.DataFrame]) -> str:
    """One paragraph: is every G's held-out prediction within 2 %, per model, with the numbers."""
    h = tables["scaling_holdout"]
    lines = []
    for m, sub in h.groupby("model", sort=False):
        worst = sub.loc[sub["abs_rel_err"].idxmax()]
        ok = bool(sub["within_2pct"].all())
        lines.append(f"{m}: {'every G within' if ok else 'FAILS'} {USEFUL:.0%} on {worst['size']} "
                     f"(worst G={worst['G']}: {100 * worst['abs_rel_err']:.2f} %; "
                     f"{int(sub['inside_pi'].sum())}/{len(sub)} inside the 95 % PI)")
    return "Held-out check: " + "; ".join(lines) + "."


def scaling_compare(tables: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """One row per (ladder, G) of several ladders fitted apart (sp with one lr per size vs muP with each G's
    transferred lr, say): each one's winning model, s_G with its interval, the held-out largest size's error
    and whether it fell inside the 95 % PI, and the winner's mean progressive error."""
    rows = []
    for label, t in tables.items():
        win = t["scaling_models"][t["scaling_models"].winner].iloc[0]
        fit = t["scaling_fit"].set_index("G")
        hold = t["scaling_holdout"]
        hold = hold[(hold.model == win.model) & (hold.objective == win.objective)].set_index("G")
        for G in fit.index:
            f, h = fit.loc[G], hold.loc[G] if G in hold.index else None
            rows.append({"ladder": label, "model": f"{win.model} / {win.objective}", "G": G,
                         "s_G": _pm(f["s"], f["s_lo"], f["s_hi"]),
                         "held-out error": "—" if h is None else f"{100 * h.abs_rel_err:.2f} %",
                         "in 95 % PI": "—" if h is None else _mark(h.inside_pi),
                         "mean err (progressive)": f"{100 * win.mean_err_progressive:.2f} %"})  # fmt: skip
    return pd.DataFrame(rows)
