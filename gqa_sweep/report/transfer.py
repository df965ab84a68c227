"""lr transfer across width (`experiment=mup_transfer`): does the best lr of a narrow model stay best as it widens?

- `transfer_loss`: final val loss per (parametrization, G, width, lr), mean over seeds, a diverged or failed run
  counted as ln V (cells.loss_by_lr), with the seeds behind each mean.
- `transfer_best`: per (parametrization, G, width) the grid's best lr (lowest mean loss), the vertex of the
  parabola through it and its two neighbours in log lr (scaling.ladder.best_lr; the edge lr when it is an edge),
  and the edge flag.
- `transfer_drift`: per (parametrization, G) the best lr at each width and the drift: log2(best lr at the widest /
  at the narrowest) and the range log2(max / min) over widths, in grid steps when the grid is factor-2 spaced.
  muP transfers when the range is at most one grid step across the widths.
A row's parametrization is NULL in stores written before the column existed: those runs are sp.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from gqa_sweep.report.cells import best_lr_at_edge, loss_by_lr
from gqa_sweep.report.load import ReportError
from gqa_sweep.scaling.ladder import best_lr

KEYS = ["parametrization", "n_kv_heads", "d_model"]


def _runs(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    runs["parametrization"] = runs["parametrization"].fillna("sp")
    runs["base_width"] = [json.loads(c)["model"].get("mup_base_width") if isinstance(c, str) else None
                          for c in runs["config"]]  # fmt: skip
    for c in ("n_kv_heads", "d_model", "lr", "val_loss", "vocab_size", "seed"):
        runs[c] = pd.to_numeric(runs[c], errors="coerce")
    return runs[runs.n_kv_heads.notna() & runs.lr.notna()]


def transfer_loss(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (p, G, width), cell in _runs(runs).groupby(KEYS):
        seeds = cell.groupby("lr").seed.nunique()
        for lr, loss in loss_by_lr(cell).items():
            rows.append({"parametrization": p, "G": int(G), "width": int(width), "lr": lr, "val_loss": loss,
                         "seeds": int(seeds[lr])})  # fmt: skip
    return pd.DataFrame(rows)


def transfer_best(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (p, G, width), cell in _runs(runs).groupby(KEYS):
        losses = loss_by_lr(cell).dropna()
        if losses.empty:
            continue
        vertex, _ = best_lr(losses.to_dict()) if len(losses) >= 3 else (losses.idxmin(), True)
        base = cell.base_width.dropna()
        rows.append({"parametrization": p, "G": int(G), "width": int(width), "best_lr": losses.idxmin(),
                     "base_width": int(base.iloc[0]) if len(base) else None,
                     "vertex_lr": vertex, "val_loss": losses.min(), "at_edge": best_lr_at_edge(cell),
                     "grid": len(losses)})  # fmt: skip
    return pd.DataFrame(rows)


def transfer_drift(best: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (p, G), g in best.groupby(["parametrization", "G"]):
        g = g.sort_values("width")
        lrs = g.best_lr.tolist()
        rows.append({
            "parametrization": p, "G": G, "widths": f"{g.width.iloc[0]}-{g.width.iloc[-1]}",
            "width_ratio": g.width.iloc[-1] / g.width.iloc[0],
            "best_lr_by_width": ", ".join(f"{lr:g}" for lr in lrs),
            "drift_log2": math.log2(lrs[-1] / lrs[0]),
            "range_log2": math.log2(max(lrs) / min(lrs)),
            "any_at_edge": bool(g.at_edge.any()),
        })  # fmt: skip
    return pd.DataFrame(rows)


def verdict(drift: pd.DataFrame) -> str:
    """One line per (parametrization, G): what the data shows, plainly."""
    lines = []
    for _, r in drift.iterrows():
        moved = f"the best lr moves by {r.range_log2:.0f} factor-2 step(s) over a {r.width_ratio:g}x width range"
        ok = "within one step: it transfers" if r.range_log2 <= 1 else "more than one step: it does not transfer"
        edge = " (a best lr at the grid's edge: the optimum may lie outside it)" if r.any_at_edge else ""
        lines.append(f"- {r.parametrization}, G={r.G}: {moved} ({r.best_lr_by_width}); {ok}{edge}.")
    return "\n".join(lines)


def followup_commands(best: pd.DataFrame, seeds: str = "1,2") -> list[str]:
    """The second stage: `seeds` at each cell's best lr and its factor-2 neighbours, one sweep per cell."""
    out = []
    for _, r in best.iterrows():
        mup = "" if r.parametrization != "mup" else (
            f" model.parametrization=mup model.mup_base_width={int(r.base_width)}")
        lrs = ",".join(f"{r.best_lr * f:g}" for f in (0.5, 1, 2))
        out.append(f"gqa-sweep -m experiment=mup_transfer{mup} model.d_model={r.width} model.n_kv_heads={r.G} "
                   f"optim.lr={lrs} seed={seeds}")  # fmt: skip
    return out


def transfer_plot(loss: pd.DataFrame):
    """Val loss vs lr, one panel per (parametrization, G), one curve per width (the muP paper's Fig. 1)."""
    import matplotlib.pyplot as plt

    panels = list(loss.groupby(["G", "parametrization"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    widths = sorted(loss.width.unique())
    for ax, ((G, p), g) in zip(axes[0], panels):
        for i, (width, w) in enumerate(g.groupby("width")):
            w = w.sort_values("lr")
            ax.plot(w.lr, w.val_loss, "o-", ms=3, color=cmap(i / max(1, len(widths) - 1)), label=f"d_model {width}")
            best = w.loc[w.val_loss.idxmin()]
            ax.plot([best.lr], [best.val_loss], "k*", ms=8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{p}, G={G}", fontsize=10)
        ax.set_xlabel("lr (at the base width for mup)")
    axes[0][0].set_ylabel("final val loss (mean over seeds)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def transfer_report(runs: pd.DataFrame, out: Path, formats, plots: bool) -> list[Path]:
    """Print and write the three tables (.md / .csv), the verdict and the second stage's commands (and the plot)."""
    from gqa_sweep.report.plots import write_plots

    loss, best = transfer_loss(runs), transfer_best(runs)
    if best.empty:
        raise ReportError("no runs with an lr and a G to compare; run gqa-sweep -m experiment=mup_transfer first")
    tables = {"transfer_best": best, "transfer_drift": transfer_drift(best), "transfer_loss": loss}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        if "csv" in formats:
            table.to_csv(out / f"{name}.csv", index=False)
            written.append(out / f"{name}.csv")
    text = "".join(f"## {name}\n\n{t.to_markdown(index=False, floatfmt='.4g')}\n\n" for name, t in tables.items())
    text += verdict(tables["transfer_drift"]) + "\n\nSecond stage (two more seeds around each best lr):\n\n"
    text += "\n".join(followup_commands(best)) + "\n"
    print(text)
    (out / "transfer.md").write_text(text)
    written.append(out / "transfer.md")
    if plots:
        written += write_plots({"transfer_loss_vs_lr": transfer_plot(loss)}, out)
    return written
