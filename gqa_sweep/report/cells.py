"""Cells of the report's tables: the runs of one (model, G), their best lr and their statistics."""

from __future__ import annotations

import pandas as pd

from gqa_sweep.report.load import DASH
from gqa_sweep.scaling.lr_transfer import loss_by_lr, loss_init  # noqa: F401 (loss_init: the report's tables)


def best_lr_runs(cell: pd.DataFrame) -> pd.DataFrame:
    """The runs of the cell's best lr (lowest `loss_by_lr`); the cell itself if it has one lr."""
    if cell.lr.nunique() <= 1:
        return cell
    losses = loss_by_lr(cell).dropna()
    return cell if losses.empty else cell[cell.lr == losses.idxmin()]


def best_lr_at_edge(cell: pd.DataFrame) -> bool:
    """The best lr is the lowest or highest of a tuned grid (>= 2 lrs): the optimum may lie outside it."""
    lrs = cell.lr.dropna().unique()
    if len(lrs) < 2:
        return False
    best = best_lr_runs(cell).lr.iloc[0]
    return bool(best in (lrs.min(), lrs.max()))


def status_counts(cell: pd.DataFrame) -> dict:
    status = cell.status.value_counts()
    return {
        "n_completed": int(status.get("completed", 0)),
        "n_runs": len(cell),
        "n_diverged": int(status.get("diverged", 0)),
        "n_failed": int(status.get("failed", 0)),
    }


def run_stats(runs: pd.DataFrame) -> dict:
    """A table cell's numbers over its runs (usually one lr's, best_lr_runs): val ppl mean and std of the completed
    runs, and the runs counted by status."""
    done = runs[runs.status == "completed"]
    # std ddof=1 is NaN for a single run: shown as "± —", never as a fake 0.
    return {"val_ppl_mean": done.val_ppl.mean(), "val_ppl_std": done.val_ppl.std(ddof=1), **status_counts(runs)}


def num(x: float, fmt: str) -> str:
    """A number formatted, or the dash of "no value"."""
    return DASH if x is None or pd.isna(x) else format(x, fmt)


def mean_std(mean: float, std: float, n: int, fmt: str = ".3f") -> str:
    """`mean ± std` over n runs; "± —" for one run (its std is undefined, never a fake 0), "—" for none."""
    return DASH if not n else f"{mean:{fmt}} ± {num(std, fmt)}"


def is_conversion(df: pd.DataFrame) -> pd.Series:
    return (df.init != "scratch") | df.alpha.notna()
