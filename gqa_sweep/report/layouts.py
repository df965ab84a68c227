"""The `layouts` table: per-layer KV-head layouts (and head sizes) compared at their KV bytes per token.

Written when the runs hold a per-layer layout (`model.n_kv_heads=[4,2,1,1]`, `experiment=kv_budget`): one row
per (model, layout, d_head), ordered by KV bytes per token, with Δ ppl against the uniform layout of the same
bytes at the model's default head size (d_model / H), the reference the Cross-Layer Attention paper compares to.
"""

from __future__ import annotations

import pandas as pd

from gqa_sweep.report import stability
from gqa_sweep.report.cells import best_lr_runs, is_conversion, mean_std, num, run_stats
from gqa_sweep.report.load import DASH, prepare

TITLES = {"layouts": "KV-head layouts at equal KV bytes per token: per-layer G and G × d_head trades"}
NOTES = {
    "layouts": (
        "layout: G of each layer, first to last (uniform: every layer the same). val ppl: mean ± sample std over "
        "the completed seeds (n/N runs), at the cell's best lr when several were run. Δ vs uniform: 100 · (mean "
        "ppl / mean ppl of the uniform layout with the same KV bytes/token and d_head = d_model / H − 1); — when "
        "there is no such run. KV B/token = 2 · Σ_l G_l · d_head · bytes."
    ),
}


def _is_uniform(layout: str) -> bool:
    return len(set(layout.split(","))) == 1


def layouts_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, layout, d_head); empty unless some run has a per-layer layout."""
    if "kv_layout" not in runs or not runs.kv_layout.dropna().map(lambda x: not _is_uniform(x)).any():
        return pd.DataFrame()
    df = prepare(stability.baseline_runs(runs))
    df = df[~is_conversion(df) & df.kv_layout.notna()]
    rows = []
    for (model, layout, d_head), cell in df.groupby(["model", "kv_layout", "d_head"], observed=True, sort=True):
        cell = best_lr_runs(cell)
        rows.append({
            "model": str(model), "layout": layout, "uniform": _is_uniform(layout), "d_head": int(d_head),
            "default_d_head": int(d_head) * int(cell.n_heads.iloc[0]) == int(cell.d_model.iloc[0]),
            "kv_bytes_per_token": cell.kv_bytes_per_token.median(), "n_params": cell.n_params.median(),
            "lr": cell.lr.iloc[0], **run_stats(cell),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    ref = table[table.uniform & table.default_d_head].set_index(["model", "kv_bytes_per_token"]).val_ppl_mean
    keys = pd.MultiIndex.from_frame(table[["model", "kv_bytes_per_token"]])
    table["delta_ppl_vs_uniform_pct"] = 100.0 * (table.val_ppl_mean.to_numpy() / ref.reindex(keys).to_numpy() - 1.0)
    return table.sort_values(["model", "kv_bytes_per_token", "val_ppl_mean"]).reset_index(drop=True)


def display_layouts(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": t.model,
        "layout": [f"{x} (uniform)" if u else x for x, u in zip(t.layout, t.uniform)],
        "d_head": t.d_head.astype(str),
        "KV B/token": t.kv_bytes_per_token.map(lambda x: num(x, ",.0f")),
        "params": t.n_params.map(lambda x: num(x / 1e3, ".1f") + "K"),
        "val ppl": [mean_std(m, s, n) for m, s, n in zip(t.val_ppl_mean, t.val_ppl_std, t.n_completed)],
        "n": [f"{n}/{N}" for n, N in zip(t.n_completed, t.n_runs)],
        "Δ vs uniform": t.delta_ppl_vs_uniform_pct.map(lambda x: DASH if pd.isna(x) else f"{x:+.2f}%"),
        "lr": t.lr.map(lambda x: num(x, "g")),
    })


def layouts_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"layouts": layouts_table(runs)}


DISPLAY = {"layouts": display_layouts}
