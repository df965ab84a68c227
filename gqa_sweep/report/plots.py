"""Plots (matplotlib Figures, no pyplot state): ppl, KV bytes and decode speed vs G, the Pareto picture, loss curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from gqa_sweep.report.annotate import caption, contention, errorbar, n_note
from gqa_sweep.report.load import prepare
from gqa_sweep.report.recall import recall_plots
from gqa_sweep.report.stability import stability_plots
from gqa_sweep.report.tables import is_conversion
from gqa_sweep.report.variants import variants_plots

# ----------------------------------------------------------------------------------------------- plots


_BYTES = FuncFormatter(lambda x, _: f"{x:,.0f}")


def _figure(ncols: int = 1) -> tuple[Figure, list]:
    # Figure + Agg canvas, no pyplot: no global backend state, and notebooks still display the figure.
    fig = Figure(figsize=(5.5 * ncols, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _g_axis(ax, gs: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(gs)), [str(g) for g in sorted(set(gs))])
    ax.minorticks_off()
    ax.set_xlabel("G = n_kv_heads (1 = MQA, H = MHA)")
    ax.grid(alpha=0.3)


def _per_model(table: pd.DataFrame, y: str, ylabel: str, std: str | None = None) -> Figure:
    fig, (ax,) = _figure()
    for model, t in table.groupby("model", sort=False):
        t = t[t[y].notna()]
        if std is None:
            ax.plot(t.G, t[y], marker="o", label=model)
        else:
            errorbar(ax, t.G, t[y], t[std], t.n_completed, marker="o", label=model)
    if std is not None:
        n_note(ax, table.n_completed[table[y].notna()], "seeds")
    _g_axis(ax, table.G)
    ax.set_ylabel(ylabel)
    _legend(ax)
    return fig


def _legend(ax) -> None:
    # Beside the axes, not in them: inside it would cover the n note (lower left) or the points.
    ax.legend(title="model", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)


def _measured(runs: pd.DataFrame | None) -> pd.DataFrame | None:
    """The rows whose numbers a plot shows (completed runs), for its caption."""
    return None if runs is None or "status" not in runs else runs[runs.status == "completed"]


def plot_ppl_vs_g(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> Figure:
    """Val ppl (mean, error bars = sample std over seeds where n > 1) against G, one line per model size."""
    fig = _per_model(table, "val_ppl_mean", "val perplexity (mean ± std)", std="val_ppl_std")
    fig.axes[0].set_title("Quality vs G")
    caption(fig, _measured(runs))
    return fig


def plot_kv_bytes_vs_g(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> Figure:
    fig = _per_model(table, "kv_bytes_per_token", "KV cache bytes / token")
    fig.axes[0].set_yscale("log", base=2)
    fig.axes[0].yaxis.set_major_formatter(_BYTES)
    fig.axes[0].set_title("KV-cache size vs G")
    caption(fig, _measured(runs))
    return fig


def plot_decode_vs_g(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> Figure:
    """Median decode tokens/s against G; the axis starts at 0 so ratios between G read off the heights."""
    y = "decode_tokens_per_s_median"
    fig = _per_model(table, y, "decode tokens / s (median over runs)")
    ax = fig.axes[0]
    ax.set_title("Decode throughput vs G")
    shared = table[table.get("throughput_contended", False) & table[y].notna()] if len(table) else table
    if len(shared):
        ax.plot(shared.G, shared[y], ls="none", marker="o", ms=11, mfc="none", mec="C3", label="contended")
        _legend(ax)
        contention(fig, runs)
    top = table[y].max()
    if pd.isna(top):  # an axis with nothing on it says why
        ax.text(0.5, 0.5, "no decode throughput measured:\nno completed run recorded decode_tokens_per_s",
                transform=ax.transAxes, ha="center", va="center", color="C3")
    ax.set_ylim(0, 1.08 * top if top > 0 else 1.0)  # headroom: the fastest G is not on the frame
    caption(fig, _measured(runs), decode=True)
    return fig


def plot_ppl_vs_kv_bytes(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> Figure:
    """The Pareto picture: quality against KV-cache bytes per token, each point labelled by its G."""
    fig, (ax,) = _figure()
    for model, t in table.groupby("model", sort=False):
        t = t[t.val_ppl_mean.notna()]
        errorbar(ax, t.kv_bytes_per_token, t.val_ppl_mean, t.val_ppl_std, t.n_completed, marker="o", label=model)
        for x, y, g in zip(t.kv_bytes_per_token, t.val_ppl_mean, t.G):
            ax.annotate(f"G={g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    n_note(ax, table.n_completed[table.val_ppl_mean.notna()], "seeds")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(_BYTES)
    ax.set_xlabel("KV cache bytes / token")
    ax.set_ylabel("val perplexity (mean ± std)")
    ax.set_title("Quality vs KV-cache size (lower-left is better)")
    ax.grid(alpha=0.3)
    _legend(ax)
    caption(fig, _measured(runs))
    return fig


def plot_loss_curves(runs: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """Training loss per step, one line per run coloured by G, a panel per model; diverged runs dashed."""
    df = prepare(runs)
    df = df[~is_conversion(df) & df.run_id.isin(history.run_id)]
    models = [m for m in df.model.cat.categories if (df.model == m).any()]
    fig, axes = _figure(max(len(models), 1))
    gs = sorted(df.n_kv_heads.dropna().astype(int).unique())
    colours = dict(zip(gs, _colours(len(gs))))
    by_run = dict(tuple(history.groupby("run_id")))
    for ax, model in zip(axes, models):
        seen = set()
        for r in df[df.model == model].sort_values(["n_kv_heads", "seed"]).itertuples():
            h = by_run[r.run_id]
            G = int(r.n_kv_heads)
            loss = pd.to_numeric(h.loss, errors="coerce").where(np.isfinite(h.loss.astype(float)))
            ax.plot(h.step, loss, color=colours[G], lw=1, alpha=0.8, ls="-" if r.status == "completed" else "--",
                    label=None if G in seen else f"G={G}")
            seen.add(G)
        ax.set_title(f"{model}: training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, max(n, 1))][:n]


def make_plots(table: pd.DataFrame, runs: pd.DataFrame, history: pd.DataFrame | None = None) -> dict[str, Figure]:
    """name -> Figure for the ablation table (and loss curves when history is given and not empty)."""
    figs = {
        "ppl_vs_G": plot_ppl_vs_g(table, runs),
        "kv_bytes_vs_G": plot_kv_bytes_vs_g(table, runs),
        "decode_tokens_per_s_vs_G": plot_decode_vs_g(table, runs),
        "ppl_vs_kv_bytes": plot_ppl_vs_kv_bytes(table, runs),
    }
    if history is not None and not history.empty:
        figs["loss_curves"] = plot_loss_curves(runs, history)
    figs.update(recall_plots(runs))  # MQAR recall vs G, loss by position (report/recall.py)
    figs.update(variants_plots(runs))  # val ppl vs KV bytes per attention type (report/variants.py)
    return figs | stability_plots(runs, history)


def write_plots(figs: dict[str, Figure], out_dir: Path) -> list[Path]:
    """Each figure as PNG and SVG under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items():
        for ext, kw in (("png", {"dpi": 120}), ("svg", {"metadata": {"Date": None}})):
            path = out_dir / f"{name}.{ext}"
            fig.savefig(path, **kw)
            written.append(path)
    return written
