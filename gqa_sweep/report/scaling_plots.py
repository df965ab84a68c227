"""Plots of `gqa-report --scaling` (matplotlib Figures, no pyplot state): loss vs N per G with the fit's band and
the held-out point, the gap to MHA vs N on log-log axes, and the fit's residuals."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from gqa_sweep.report.plots import _colours, _figure
from gqa_sweep.scaling.bootstrap import DEFAULT_DRAWS, bootstrap
from gqa_sweep.scaling.models import fit_model
from gqa_sweep.scaling.points import Points


def scaling_plots(points: Points, model: str, objective: str, draws: int = DEFAULT_DRAWS) -> dict[str, Figure]:
    sizes = points.sizes
    held = sizes[-1]
    train = points.subset(sizes[:-1])
    mf = fit_model(train, model, objective)
    boot = bootstrap(mf, draws)
    full = fit_model(points, model, objective)
    cells = points.cell_means()
    keys = points.keys
    colours = dict(zip(keys, _colours(len(keys))))
    n_grid = np.logspace(np.log10(points.df["N"].min() / 1.3), np.log10(points.df["N"].max() * 3), 80)

    fig, (ax,) = _figure()
    for g in keys:
        c = cells[cells["key"] == g]
        lo, hi = np.percentile(boot.predict(g, n_grid), [2.5, 97.5], axis=0)
        ax.fill_between(n_grid, lo, hi, color=colours[g], alpha=0.2, lw=0)
        ax.plot(n_grid, mf.predict(g, n_grid), color=colours[g], label=f"G={g}")
        fitted = c[c["size"] != held]
        ax.plot(fitted["N"], fitted["loss"], "o", color=colours[g], ms=4)
        out = c[c["size"] == held]
        ax.plot(out["N"], out["loss"], "*", color=colours[g], ms=11, mec="k", mew=0.6)
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="val loss")
    ax.set_title(f"{model}/{objective} fitted on {len(sizes) - 1} sizes (95 % band); ★ held out: {held}", fontsize=9)
    ax.legend(fontsize=8)
    figs = {"scaling_loss_vs_n": fig}

    mha = points.mha_key
    fig, (ax,) = _figure()
    for g in keys:
        if g == mha:
            continue
        gap = 100 * (full.predict(g, n_grid) / full.predict(mha, n_grid) - 1)
        ax.plot(n_grid, np.abs(gap), "--", color=colours[g], lw=0.8, label=f"G={g} fit, at equal N")
        c = cells.pivot(index="size", columns="key", values="loss").reindex(sizes)
        n_g = cells[cells["key"] == g].set_index("size")["N"].reindex(sizes)
        n_mha = cells[cells["key"] == mha].set_index("size")["N"].reindex(sizes)
        same = 100 * (full.predict(g, n_g.to_numpy()) / full.predict(mha, n_mha.to_numpy()) - 1)
        ax.plot(n_g, np.abs(same), color=colours[g], label=f"G={g} fit, same shape (fewer KV params)")
        ax.plot(n_g, (100 * (c[g] / c[mha] - 1)).abs(), "o", color=colours[g], ms=4)
    ax.set(xscale="log", yscale="log", xlabel="non-embedding parameters N", ylabel="|gap vs MHA| (%)")
    ax.set_title("Loss gap to MHA vs N (fit on every size; points: measured at each size)", fontsize=9)
    ax.legend(fontsize=8)
    figs["scaling_gap_vs_n"] = fig

    fig, (ax,) = _figure()
    df = points.df
    r = full.fit.residuals
    for g in keys:
        m = (df["key"] == g).to_numpy()
        ax.plot(df.loc[m, "N"], 100 * r[m], "o", color=colours[g], ms=4, label=f"G={g}")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="log-loss residual (%)")
    ax.set_title(f"Residuals of {model}/{objective} fitted on every size", fontsize=9)
    ax.legend(fontsize=8)
    figs["scaling_residuals"] = fig
    for f in figs.values():
        for a in f.axes:
            a.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels overlap at a 10x span
    return figs
