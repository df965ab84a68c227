"""The `conversion` table (the GQA paper's Figs 4-5): val ppl of MHA -> GQA conversions by method x uptraining
fraction alpha, with scratch runs of the same (model, G) as the baseline and the MHA parent's ppl for reference."""

from __future__ import annotations

import math

import pandas as pd

from gqa_sweep.report.cells import best_lr_runs, mean_std, num, run_stats
from gqa_sweep.report.load import DASH, METHODS, prepare

TITLES = {
    "conversion": "MHA → GQA conversion: val ppl by method × uptraining fraction α",
}
NOTES = {
    "conversion": (
        "val ppl mean ± sample std (n completed / N runs) per conversion method and uptraining fraction α "
        "(α = — : no α recorded, e.g. a from-scratch run of the full budget). MHA parent: mean val ppl of "
        "the parent runs the checkpoints were converted from."
    ),
}


def conversion_table(runs: pd.DataFrame, all_runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tidy table of val ppl per (model, G, method, alpha) for MHA->GQA conversion; empty if there is none.

    Scratch runs of the converted (model, G) are the baseline. `all_runs` is where the MHA parents are
    looked up (they usually belong to another sweep than the conversions).
    """
    df = prepare(runs)
    converted = df[df.init != "scratch"]
    if converted.empty:
        return pd.DataFrame()
    parents = prepare(all_runs if all_runs is not None else runs)
    parents = parents[parents.status == "completed"].set_index("run_id").val_ppl
    targets = converted[["model", "n_kv_heads"]].drop_duplicates()
    df = df.merge(targets, on=["model", "n_kv_heads"])
    rows = []
    for (model, G, method), cell in df.groupby(["model", "n_kv_heads", "init"], observed=True, sort=True):
        parent_ids = converted[(converted.model == model) & (converted.n_kv_heads == G)].parent_run_id.dropna()
        parent_ppl = parents.reindex(parent_ids.unique()).mean()
        for alpha, acell in cell.groupby(cell.alpha.fillna(-1.0), sort=True):  # -1: alpha not recorded
            acell = best_lr_runs(acell)
            rows.append({
                "model": str(model), "G": int(G), "method": method,
                "alpha": math.nan if alpha < 0 else alpha,
                **run_stats(acell), "parent_val_ppl": parent_ppl,
            })
    table = pd.DataFrame(rows)
    rank = {m: i for i, m in enumerate(METHODS)}
    order = table.method.map(lambda m: rank.get(m, len(METHODS)))
    return table.assign(_o=order).sort_values(["model", "G", "_o", "method", "alpha"]).drop(columns="_o")


def conversion_tables(runs: pd.DataFrame, all_runs: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    return {"conversion": conversion_table(runs, all_runs)}


def display_conversion(t: pd.DataFrame) -> pd.DataFrame:
    t = t.assign(
        col=t.alpha.map(lambda a: "α=" + num(a, "g")),
        cell=[f"{mean_std(m, s, n, '.2f')} ({n}/{N})" for m, s, n, N in
              zip(t.val_ppl_mean, t.val_ppl_std, t.n_completed, t.n_runs)],
    )
    alphas = sorted(t.alpha.dropna().unique())
    cols = [f"α={a:g}" for a in alphas] + ([f"α={DASH}"] if t.alpha.isna().any() else [])
    wide = t.pivot_table(index=["model", "G", "method"], columns="col", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=cols).fillna(DASH).reset_index()
    wide.columns.name = None
    parent = t.groupby(["model", "G", "method"], sort=False).parent_val_ppl.first().map(lambda x: num(x, ".2f"))
    wide["MHA parent ppl"] = parent.to_numpy()
    return wide.assign(G=wide.G.astype(str))


DISPLAY = {"conversion": display_conversion}
