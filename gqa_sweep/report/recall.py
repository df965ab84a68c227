"""Recall report: MQAR accuracy per G x test segment (table, plot) and val loss by position per G (plot).

- `recall` table: one row per (model, G, test segment) of the MQAR runs; accuracy mean ± sample std over
  the completed seeds at the best lr of that cell (Zoology Fig. 2 reports the best of 4 lrs per point) and
  at one fixed lr for the whole table (the lr with the highest mean recall over all runs).
- `recall_vs_G` plot: accuracy against G, a panel per test segment (solid: best lr, dashed: fixed lr).
- `loss_vs_position` plot: for text runs, val loss per position bucket of the block, one line per G, and
  its difference to MHA: a long-context benefit of more KV heads is a gap that grows with position.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gqa_sweep.report.annotate import errorbar, n_note
from gqa_sweep.report.cells import mean_std
from gqa_sweep.report.load import prepare

TITLES = {"recall": "Recall (MQAR): accuracy per G × test segment"}
NOTES = {
    "recall": (
        "accuracy: argmax accuracy at the query positions of the held-out test set, mean ± sample std (ddof=1) "
        "over the n completed seeds; diverged and failed runs are not averaged. best lr: the lr with the highest "
        "mean accuracy for that G and segment (Zoology's protocol); fixed lr: one lr for the whole table, the "
        "one with the highest mean recall over all runs. (test only): a segment never trained on."
    ),
}


def _is_mqar(df: pd.DataFrame) -> pd.Series:
    return df.data_name.astype(str).eq("mqar") & df.recall_acc_by_segment.notna()


def _train_segments(config: str) -> set[str]:
    data = json.loads(config)["data"]
    segs = data.get("train_segments") or [[data["seq_len"], data["num_kv_pairs"]]]
    return {f"T{t}-K{k}" for t, k in segs}


def segment_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, test segment): the run's columns plus segment, seq_len, num_kv_pairs, acc, test_only."""
    df = prepare(runs)
    df = df[_is_mqar(df) & (df.init == "scratch")]
    rows = []
    for r in df.itertuples(index=False):
        trained = _train_segments(r.config) if isinstance(r.config, str) else set()
        for s in json.loads(r.recall_acc_by_segment):
            rows.append({**r._asdict(), **s, "test_only": s["segment"] not in trained})
    return pd.DataFrame(rows)


def _stats(accs: pd.Series) -> dict:
    return {"mean": accs.mean(), "std": accs.std(ddof=1), "n": int(accs.notna().sum())}


def recall_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Raw numbers: model, G, segment, best lr with its accuracy stats, the fixed lr with its stats."""
    seg = segment_rows(runs)
    if seg.empty:
        return pd.DataFrame()
    done = seg[seg.status == "completed"]
    fixed_lr = done.groupby("lr").recall_acc.mean().idxmax() if not done.empty else np.nan
    out = []
    keys = ["model", "n_heads", "n_kv_heads", "segment"]
    for (model, H, G, name), cell in seg.groupby(keys, observed=True, sort=False):
        ok = cell[cell.status == "completed"]
        by_lr = ok.groupby("lr").acc.mean()
        best = by_lr.idxmax() if not by_lr.empty else np.nan
        b, f = _stats(ok[ok.lr == best].acc), _stats(ok[ok.lr == fixed_lr].acc)
        out.append({
            "model": str(model), "n_heads": int(H), "G": int(G), "segment": name,
            "seq_len": int(cell.seq_len.iloc[0]), "num_kv_pairs": int(cell.num_kv_pairs.iloc[0]),
            "test_only": bool(cell.test_only.iloc[0]),
            "best_lr": best, "acc_best_mean": b["mean"], "acc_best_std": b["std"], "n_best": b["n"],
            "fixed_lr": fixed_lr, "acc_fixed_mean": f["mean"], "acc_fixed_std": f["std"], "n_fixed": f["n"],
            "n_runs": int(cell.run_id.nunique()),
        })
    t = pd.DataFrame(out)
    return t.sort_values(["model", "test_only", "seq_len", "num_kv_pairs", "G"], kind="stable")


def display_recall(t: pd.DataFrame) -> pd.DataFrame:
    """Wide display: a row per (model, G), per segment a best-lr and a fixed-lr column."""
    t = t.assign(label=t.segment + np.where(t.test_only, " (test only)", ""))
    rows = []
    for (model, G), g in t.groupby(["model", "G"], sort=False):
        row = {"model": model, "G": str(G)}
        for r in g.itertuples():
            row[f"{r.label} best lr"] = f"{mean_std(r.acc_best_mean, r.acc_best_std, r.n_best)} ({r.best_lr:g})"
        for r in g.itertuples():
            row[f"{r.label} @ lr={r.fixed_lr:g}"] = mean_std(r.acc_fixed_mean, r.acc_fixed_std, r.n_fixed)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["model", "G"], key=lambda c: c.map(int) if c.name == "G" else c)


DISPLAY = {"recall": display_recall}


def recall_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"recall": recall_table(runs)}


# ----------------------------------------------------------------------------------------------- plots


def _figure(ncols: int, width: float = 5.5) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _g_axis(ax, gs) -> None:
    gs = sorted({int(g) for g in gs})
    ax.set_xscale("log", base=2)
    ax.set_xticks(gs, [str(g) for g in gs])
    ax.minorticks_off()
    ax.set_xlabel("G = n_kv_heads (1 = MQA, H = MHA)")
    ax.grid(alpha=0.3)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, max(n, 1))][:n]


def plot_recall_vs_g(table: pd.DataFrame) -> Figure:
    """Accuracy (mean ± std over seeds) against G, a panel per test segment, a line per model and lr choice."""
    segs = list(dict.fromkeys(table.segment))
    models = list(dict.fromkeys(table.model))
    fig, axes = _figure(len(segs), width=4.0)
    for ax, name in zip(axes, segs):
        t = table[table.segment == name]
        for colour, model in zip(_colours(len(models)), models):
            s = t[t.model == model].sort_values("G")
            errorbar(ax, s.G, s.acc_best_mean, s.acc_best_std, s.n_best, marker="o", color=colour,
                     label=f"{model}, best lr")
            errorbar(ax, s.G, s.acc_fixed_mean, s.acc_fixed_std, s.n_fixed, marker="s", color=colour,
                     ls="--", alpha=0.6, label=f"{model}, lr={s.fixed_lr.iloc[0]:g}")
        n_note(ax, pd.concat([t.n_best, t.n_fixed]), "seeds")
        _g_axis(ax, t.G)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("MQAR recall accuracy (mean ± std)")
        ax.set_title(name + (" (test only)" if t.test_only.iloc[0] else ""))
        ax.legend(fontsize=7)
    return fig


def position_losses(runs: pd.DataFrame) -> pd.DataFrame:
    """Text runs: mean val loss per position bucket per (model, G), over the seeds of each G's best lr."""
    df = prepare(runs)
    df = df[(df.status == "completed") & (df.init == "scratch") & df.val_loss_by_pos.notna() & ~_is_mqar(df)
            & ~df.data_name.astype(str).eq("mqar")]
    rows = []
    for (model, H, G), cell in df.groupby(["model", "n_heads", "n_kv_heads"], observed=True, sort=True):
        best = cell.groupby("lr").val_loss.mean().idxmin()
        buckets = np.array([json.loads(s) for s in cell[cell.lr == best].val_loss_by_pos], dtype=float)
        for i, loss in enumerate(np.nanmean(buckets, axis=0)):
            rows.append({"model": str(model), "n_heads": int(H), "G": int(G), "bucket": i,
                         "n_buckets": buckets.shape[1], "block_size": int(cell.block_size.iloc[0]), "loss": loss})
    return pd.DataFrame(rows)


def plot_loss_vs_position(pos: pd.DataFrame) -> Figure:
    """Val loss by position (bucket centre) per G, and the difference to the same model's MHA."""
    models = list(dict.fromkeys(pos.model))
    fig, axes = _figure(2 * len(models))
    for (ax, dax), model in zip(zip(axes[::2], axes[1::2]), models):
        p = pos[pos.model == model]
        x_of = (p.bucket + 0.5) * p.block_size / p.n_buckets
        p = p.assign(x=x_of)
        mha = p[p.G == p.n_heads].set_index("bucket").loss
        gs = sorted(p.G.unique())
        for colour, G in zip(_colours(len(gs)), gs):
            g = p[p.G == G].sort_values("bucket")
            ax.plot(g.x, g.loss, marker="o", color=colour, label=f"G={G}")
            if not mha.empty:
                dax.plot(g.x, g.loss.to_numpy() - mha.reindex(g.bucket).to_numpy(), marker="o", color=colour,
                         label=f"G={G}")
        for a, ylabel, title in ((ax, "val loss", "val loss by position"),
                                 (dax, "val loss − MHA's", "gap to MHA by position")):
            a.set_xlabel("position in the block (bucket centre)")
            a.set_ylabel(ylabel)
            a.set_title(f"{model}: {title}")
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
    return fig


def recall_plots(runs: pd.DataFrame) -> dict[str, Figure]:
    """The recall figures the runs support (none for a store without MQAR or per-position rows)."""
    figs = {}
    table = recall_table(runs)
    if not table.empty:
        figs["recall_vs_G"] = plot_recall_vs_g(table)
    pos = position_losses(runs)
    if not pos.empty:
        figs["loss_vs_position"] = plot_loss_vs_position(pos)
    return figs
