"""Stability across G (Wortsman et al. 2023, arXiv 2309.14322): tables and plots of `experiment=stability`.

Runs are grouped by (model, G, mitigation), the mitigation being the row's qk_norm / z_loss settings.
- `stability`: final val loss per lr (mean over seeds, capped at loss_init = ln V, a diverged or failed run
  counting as loss_init) and LR sensitivity = E_lr[min(loss(lr), loss_init) - min_lr min(loss(lr), loss_init)],
  on the seed-mean curve (Wortsman's definition) and per seed (mean ± std: the error bar).
- `attn_logits`: the largest attention logit over training, per lr (mean ± std over seeds).
- `divergence`: diverged runs per lr (k/N) and loss spikes.
Plots: loss vs lr per G (their Fig. 1), LR sensitivity vs G, max attention logit vs step per G.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gqa_sweep.report.annotate import errorbar, n_note
from gqa_sweep.report.cells import loss_init, num
from gqa_sweep.report.load import DASH, prepare

TITLES = {
    "stability": "Stability: LR sensitivity per G and mitigation (Wortsman et al. 2023)",
    "attn_logits": "Stability: largest attention logit over training, per lr",
    "divergence": "Stability: diverged runs per lr",
}
NOTES = {
    "stability": (
        "loss @ lr: final val loss, mean over seeds, each run capped at loss_init = ln V (a uniform predictor; "
        "a diverged or failed run counts as loss_init). LR sensitivity = mean over the lr grid of loss(lr) − "
        "min over lr of loss(lr): on the seed-mean curve, and per seed (mean ± sample std over seeds). "
        "0 means every lr reached the best loss; loss_init − best loss is its ceiling."
    ),
    "attn_logits": (
        "max |q·k|/√d_head over layers, heads and causal pairs, sampled every metrics.attn_logit_every steps on "
        "4 training sequences; the largest sample of each run, mean ± sample std over seeds (diverged runs "
        "included, up to their divergence)."
    ),
    "divergence": (
        "k/N runs diverged (non-finite loss or loss > divergence_factor · ln V) at each lr; loss spikes: "
        "mean count per completed run over the whole grid."
    ),
}


def mitigation(df: pd.DataFrame) -> pd.Series:
    """'none', 'qk_norm', 'z_loss=1e-4' or 'qk_norm+z_loss=1e-4' per row (rows from older stores: 'none')."""
    def col(name: str) -> pd.Series:
        return pd.to_numeric(df[name], errors="coerce").fillna(0) if name in df else pd.Series(0, index=df.index)

    qk, z = col("qk_norm").astype(bool), col("z_loss").astype(float)
    parts = [(["qk_norm"] if q else []) + ([f"z_loss={v:g}"] if v else []) for q, v in zip(qk, z)]
    return pd.Series(["+".join(p) or "none" for p in parts], index=df.index)


def baseline_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows the G ablation compares: without mitigations when the runs mix them, else all rows."""
    m = mitigation(runs)
    return runs[m == "none"].reset_index(drop=True) if m.nunique() > 1 and (m == "none").any() else runs


def _stability_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """From-scratch runs with a `mitigation` label; empty unless some (model, G, mitigation) has several lrs."""
    df = prepare(runs)
    df = df[(df.init == "scratch") & df.alpha.isna()]  # conversion runs belong to the conversion table
    df = df.assign(mitigation=mitigation(df))
    if df.empty:
        return df
    keys = ["model", "n_kv_heads", "mitigation"]
    if df.groupby(keys, observed=True).lr.nunique().max() <= 1 or df.mitigation.nunique() <= 1:
        return df.iloc[:0]  # one mitigation: the plain lr_sensitivity table already says it all
    return df


def _capped_loss(cell: pd.DataFrame) -> pd.Series:
    """Final val loss per run, capped at ln V; diverged and failed runs count as ln V."""
    l0 = loss_init(cell)
    return cell.val_loss.where(cell.status == "completed", l0).clip(upper=l0)


def _sensitivity(loss_by_lr: pd.Series) -> float:
    return float((loss_by_lr - loss_by_lr.min()).mean()) if loss_by_lr.notna().any() else math.nan


def _groups(df: pd.DataFrame):
    return df.groupby(["model", "n_heads", "n_kv_heads", "mitigation"], observed=True, sort=True)


def stability_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Loss per lr, best lr and LR sensitivity per (model, G, mitigation), with a per-seed error bar."""
    df = _stability_runs(runs)
    rows = []
    for (model, H, G, mit), cell in _groups(df):
        capped = cell.assign(loss=_capped_loss(cell))
        curve = capped.groupby("lr").loss.mean().sort_index()
        per_seed = capped.pivot_table(index="seed", columns="lr", values="loss", aggfunc="mean")
        per_seed = per_seed.dropna()  # a seed missing an lr has no curve of its own
        seed_sens = per_seed.apply(_sensitivity, axis=1)
        rows.append({
            "model": str(model), "n_heads": int(H), "G": int(G), "mitigation": mit,
            **{f"loss_lr={lr:g}": v for lr, v in curve.items()},
            "best_lr": curve.idxmin() if curve.notna().any() else math.nan,
            "best_loss": curve.min(),
            "loss_init": loss_init(cell),
            "lr_sensitivity": _sensitivity(curve),
            "lr_sensitivity_seed_mean": seed_sens.mean(),
            "lr_sensitivity_seed_std": seed_sens.std(ddof=1),
            "n_seeds": len(seed_sens),
            "n_runs": len(cell),
            "n_diverged": int((cell.status == "diverged").sum()),
            "n_failed": int((cell.status == "failed").sum()),
        })
    return _lr_columns_sorted(pd.DataFrame(rows), "loss_lr=")


def attn_logit_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Max attention logit over training per (model, G, mitigation) and lr: mean and std over seeds."""
    df = _stability_runs(runs)
    rows = []
    for (model, H, G, mit), cell in _groups(df):
        stats = cell.groupby("lr").max_attn_logit.agg(["mean", "std"]).sort_index()
        row = {"model": str(model), "n_heads": int(H), "G": int(G), "mitigation": mit}
        for lr, (mean, std) in stats.iterrows():
            row[f"logit_lr={lr:g}"], row[f"logit_std_lr={lr:g}"] = mean, std
        rows.append(row | {"max_attn_logit": cell.max_attn_logit.max()})
    return _lr_columns_sorted(pd.DataFrame(rows), "logit")


def divergence_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Diverged / all runs per (model, G, mitigation) and lr, plus loss spikes per completed run."""
    df = _stability_runs(runs)
    rows = []
    for (model, H, G, mit), cell in _groups(df):
        row = {"model": str(model), "n_heads": int(H), "G": int(G), "mitigation": mit}
        for lr, c in cell.groupby("lr", sort=True):
            row[f"diverged_lr={lr:g}"] = int((c.status == "diverged").sum())
            row[f"runs_lr={lr:g}"] = len(c)
        done = cell[cell.status == "completed"]
        rows.append(row | {
            "n_diverged": int((cell.status == "diverged").sum()), "n_failed": int((cell.status == "failed").sum()),
            "n_runs": len(cell), "loss_spikes_mean": done.loss_spikes.mean(),
        })
    return _lr_columns_sorted(pd.DataFrame(rows), ("diverged_lr=", "runs_lr="))


def _lr_columns_sorted(table: pd.DataFrame, prefix: str | tuple[str, ...]) -> pd.DataFrame:
    """Key columns, then the per-lr columns in lr order, then the rest."""
    if table.empty:
        return table
    lr_cols = sorted((c for c in table if c.startswith(prefix)), key=lambda c: (float(c.split("=")[1]), c))
    rest = [c for c in table if c not in lr_cols]
    return table[rest[:4] + lr_cols + rest[4:]]


def stability_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """name -> table for `build_tables`; all empty unless the runs hold several mitigations x several lrs."""
    return {"stability": stability_table(runs), "attn_logits": attn_logit_table(runs),
            "divergence": divergence_table(runs)}


# ------------------------------------------------------------------------------------------ formatting


def _lrs(t: pd.DataFrame, prefix: str) -> list[str]:
    return [c.split("=", 1)[1] for c in t if c.startswith(prefix)]


def display_stability(t: pd.DataFrame) -> pd.DataFrame:
    out = t[["model", "mitigation"]].assign(G=t.G.astype(str))
    for lr in _lrs(t, "loss_lr="):
        out[f"loss @ {lr}"] = t[f"loss_lr={lr}"].map(lambda x: num(x, ".3f"))
    return out.assign(**{
        "best lr": t.best_lr.map(lambda x: num(x, "g")),
        "LR sensitivity": t.lr_sensitivity.map(lambda x: num(x, ".3f")),
        "per seed (mean ± std)": [f"{num(m, '.3f')} ± {num(s, '.3f')}" for m, s in
                                  zip(t.lr_sensitivity_seed_mean, t.lr_sensitivity_seed_std)],
        "seeds": t.n_seeds.astype(str),
        "diverged": [f"{k}/{n}" for k, n in zip(t.n_diverged, t.n_runs)],
    })


def display_attn_logits(t: pd.DataFrame) -> pd.DataFrame:
    out = t[["model", "mitigation"]].assign(G=t.G.astype(str))
    for lr in _lrs(t, "logit_lr="):
        out[f"lr={lr}"] = [f"{num(m, '.1f')} ± {num(s, '.1f')}" for m, s in
                           zip(t[f"logit_lr={lr}"], t[f"logit_std_lr={lr}"])]
    return out


def display_divergence(t: pd.DataFrame) -> pd.DataFrame:
    out = t[["model", "mitigation"]].assign(G=t.G.astype(str))
    for lr in _lrs(t, "diverged_lr="):
        out[f"lr={lr}"] = [DASH if pd.isna(n) else f"{k:.0f}/{n:.0f}"
                           for k, n in zip(t[f"diverged_lr={lr}"], t[f"runs_lr={lr}"])]
    return out.assign(**{
        "diverged": [f"{k}/{n}" for k, n in zip(t.n_diverged, t.n_runs)],
        "failed": [f"{k}/{n}" for k, n in zip(t.n_failed, t.n_runs)],
        "loss spikes": t.loss_spikes_mean.map(lambda x: num(x, ".2f")),
    })


DISPLAY = {"stability": display_stability, "attn_logits": display_attn_logits, "divergence": display_divergence}


# ----------------------------------------------------------------------------------------------- plots


def _figure(nrows: int, ncols: int) -> tuple[Figure, np.ndarray]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, sharey=True)


def _styles(names: list[str]) -> dict[str, dict]:
    marks = ["o", "s", "^", "D"]
    return {m: {"ls": "-" if i == 0 else "--", "marker": marks[i % 4]} for i, m in enumerate(names)}


def _panels(df: pd.DataFrame) -> list[tuple[str, int]]:
    return [(str(m), int(g)) for (m, g), _ in df.groupby(["model", "n_kv_heads"], observed=True, sort=True)]


def plot_loss_vs_lr(runs: pd.DataFrame) -> Figure | None:
    """Final val loss (capped at ln V) against lr, a panel per G, a line per mitigation: Wortsman's Fig. 1."""
    df = _stability_runs(runs)
    if df.empty:
        return None
    panels = _panels(df)
    fig, axes = _figure(1, len(panels))
    mits = sorted(df.mitigation.unique(), key=lambda m: (m != "none", m))
    style = _styles(mits)
    for ax, (model, G) in zip(axes[0], panels):
        cell = df[(df.model == model) & (df.n_kv_heads == G)]
        ns = []
        for mit in mits:
            c = cell[cell.mitigation == mit]
            stats = c.assign(loss=_capped_loss(c)).groupby("lr").loss.agg(["mean", "std", "count"]).sort_index()
            errorbar(ax, stats.index, stats["mean"], stats["std"], stats["count"], label=mit, **style[mit])
            ns += stats["count"].tolist()
        n_note(ax, ns, "seeds")
        ax.axhline(loss_init(cell), color="grey", lw=0.8, ls=":", label="loss_init = ln V")
        ax.set_xscale("log")
        ax.set_title(f"{model}, G={G}" + (" (MQA)" if G == 1 else " (MHA)" if G == cell.n_heads.iloc[0] else ""))
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final val loss (mean ± std over seeds)")
    axes[0][-1].legend(fontsize=8)
    return fig


def plot_lr_sensitivity_vs_g(table: pd.DataFrame) -> Figure | None:
    """LR sensitivity (per-seed mean ± std) against G, a line per (model, mitigation)."""
    if table.empty:
        return None
    fig, axes = _figure(1, 1)
    ax = axes[0][0]
    style = _styles(sorted(table.mitigation.unique(), key=lambda m: (m != "none", m)))
    for (model, mit), t in table.groupby(["model", "mitigation"], sort=True):
        t = t.sort_values("G")
        errorbar(ax, t.G, t.lr_sensitivity_seed_mean, t.lr_sensitivity_seed_std, t.n_seeds,
                 label=f"{model}, {mit}", **style[mit])
    n_note(ax, table.n_seeds, "seeds")
    gs = sorted(table.G.unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(gs, [str(g) for g in gs])
    ax.minorticks_off()
    ax.set_xlabel("G = n_kv_heads (1 = MQA, H = MHA)")
    ax.set_ylabel("LR sensitivity (mean ± std over seeds)")
    ax.set_title("LR sensitivity vs G")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_attn_logit_growth(runs: pd.DataFrame, history: pd.DataFrame) -> Figure | None:
    """Max attention logit vs step (mean over seeds, log scale): a column per G, a row per mitigation, colour = lr."""
    df = _stability_runs(runs)
    h = history[history.max_attn_logit.notna()] if history is not None and not history.empty else None
    if df.empty or h is None or h.empty:
        return None
    from matplotlib import colormaps

    panels = _panels(df)
    mits = sorted(df.mitigation.unique(), key=lambda m: (m != "none", m))
    lrs = sorted(df.lr.unique())
    colour = {lr: colormaps["plasma"](x) for lr, x in zip(lrs, np.linspace(0.0, 0.85, len(lrs)))}
    # The history's own `lr` column is the scheduled lr of each step: take the run's peak lr instead.
    h = h.drop(columns="lr").merge(df[["run_id", "model", "n_kv_heads", "mitigation", "lr"]], on="run_id")
    fig, axes = _figure(len(mits), len(panels))
    for i, mit in enumerate(mits):
        for j, (model, G) in enumerate(panels):
            ax = axes[i][j]
            cell = h[(h.mitigation == mit) & (h.model == model) & (h.n_kv_heads == G)]
            for lr, c in cell.groupby("lr", sort=True):
                curve = c.groupby("step").max_attn_logit.mean()
                ax.plot(curve.index, curve.to_numpy(), color=colour[lr], lw=1.2, label=f"lr={lr:g}")
            ax.set_yscale("log")
            ax.set_title(f"{model}, G={G}, {mit}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(mits) - 1:
                ax.set_xlabel("step")
        axes[i][0].set_ylabel("max attention logit")
    axes[0][-1].legend(fontsize=7)
    return fig


def stability_plots(runs: pd.DataFrame, history: pd.DataFrame | None) -> dict[str, Figure]:
    """name -> Figure for `make_plots`; empty unless the runs hold several mitigations x several lrs."""
    figs = {
        "loss_vs_lr": plot_loss_vs_lr(runs),
        "lr_sensitivity_vs_G": plot_lr_sensitivity_vs_g(stability_table(runs)),
        "attn_logit_growth": plot_attn_logit_growth(runs, history),
    }
    return {k: f for k, f in figs.items() if f is not None}
