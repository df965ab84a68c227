"""The `fair` table: Δ ppl vs MHA per G read three ways, as careful ablations control for them.

A G sweep at a fixed shape changes two things (KV heads and parameters) and is usually run at one learning rate
tuned for MHA. `experiment=fair` runs every G x an lr grid x seeds x {param_match none, ffn}; this table puts the
readings side by side:
- fixed:   every G at one lr, MHA's best (the common practice: tune the baseline, reuse its lr), plain shape;
- tuned:   every G at its own best lr (CLA, arXiv 2405.12981), plain shape;
- matched: d_ff widened to MHA's non-embedding parameter count (Llama 2, Shazeer 2019), each G at its best lr.
A rank column per reading shows whether the G ordering changes between them.
"""

from __future__ import annotations

import math

import pandas as pd

from gqa_sweep.report import stability
from gqa_sweep.report.cells import (
    best_lr_at_edge,
    best_lr_runs,
    is_conversion,
    loss_by_lr,
    mean_std,
    run_stats,
)
from gqa_sweep.report.load import DASH, prepare

READINGS = ("fixed", "tuned", "matched")
NOT_RUN = "not run"
TITLES = {"fair": "Fair comparison: Δ ppl vs MHA at a fixed lr, at each G's best lr, and at matched parameters"}
NOTES = {
    "fair": (
        "Each reading: val ppl mean ± sample std (ddof=1) over the completed seeds (n/N runs), and Δ = 100 · (mean "
        "ppl / mean ppl of MHA (G = H) in the same reading − 1). fixed: every G at one lr, the best lr of MHA "
        "(lowest mean final val loss over seeds), plain shape (param_match=none). tuned: each G (MHA too) at its "
        "own best lr, plain shape. matched: param_match=ffn (d_ff widened so the non-embedding parameter count "
        "equals MHA's), each G at its own best lr, against MHA at its best lr. rank: 1 = lowest ppl within the "
        "reading. ⚠ edge: the best lr is the lowest or highest of the grid, so widen it. \"not run\": no runs "
        "for that reading (e.g. no param_match=ffn rows)."
    ),
}


def _cells(runs: pd.DataFrame) -> pd.DataFrame:
    df = prepare(stability.baseline_runs(runs))
    return df[~is_conversion(df)]


def _reading(cell: pd.DataFrame, lr: float | None) -> dict:
    """Stats of a cell at `lr` (None: the cell's best lr)."""
    runs = best_lr_runs(cell) if lr is None else cell[cell.lr == lr]
    if runs.empty:
        return {}
    return {
        **run_stats(runs), "lr": runs.lr.iloc[0],
        "lr_at_edge": lr is None and best_lr_at_edge(cell),
        "n_params_non_embedding": runs.n_params_non_embedding.median(),
    }


def fair_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, G): the three readings' ppl, Δ vs MHA, lr and rank; empty without an MHA baseline
    run at two or more learning rates (nothing to tune) or without any G < H."""
    df = _cells(runs)
    plain = df[df.param_match == "none"]
    if plain.empty or plain.groupby(["base_model", "n_kv_heads"], observed=True).lr.nunique().max() < 2:
        return pd.DataFrame()
    rows = []
    for (model, H), mdf in df.groupby(["base_model", "n_heads"], sort=True):
        mha = mdf[(mdf.n_kv_heads == H) & (mdf.param_match == "none")]
        if mha.empty or mdf.n_kv_heads.nunique() < 2:
            continue
        fixed_lr = loss_by_lr(mha).idxmin()
        for G, gdf in mdf.groupby("n_kv_heads", sort=True):
            none, ffn = gdf[gdf.param_match == "none"], gdf[gdf.param_match == "ffn"]
            readings = {
                "fixed": _reading(none, fixed_lr) if not none.empty else {},
                "tuned": _reading(none, None) if not none.empty else {},
                # Matching widens nothing at G = H: MHA's plain runs are the matched reading's baseline too.
                "matched": _reading(ffn if not ffn.empty else none, None) if G == H or not ffn.empty else {},
            }
            row = {"model": str(model), "n_heads": int(H), "G": int(G)}
            for name, r in readings.items():
                row |= {f"{name}_{k}": v for k, v in r.items()}
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for name in READINGS:
        col = f"{name}_val_ppl_mean"
        if col not in table:
            table[col] = math.nan
        base = table[table.G == table.n_heads].set_index("model")[col]
        table[f"{name}_delta_pct"] = 100.0 * (table[col] / table.model.map(base).astype(float) - 1.0)
        table[f"{name}_rank"] = table.groupby("model")[col].rank(method="min")
    return table


def _flag(x) -> bool:
    return bool(pd.notna(x) and x)


def _cell(t: pd.DataFrame, name: str, i: int) -> tuple[str, str, str, str]:
    r = t.iloc[i]
    if pd.isna(r.get(f"{name}_val_ppl_mean", math.nan)):
        return NOT_RUN, NOT_RUN, DASH, DASH
    ppl = mean_std(r[f"{name}_val_ppl_mean"], r[f"{name}_val_ppl_std"], r[f"{name}_n_completed"])
    ppl += f" ({int(r[f'{name}_n_completed'])}/{int(r[f'{name}_n_runs'])})"
    lr = f"{r[f'{name}_lr']:g}" + (" ⚠ edge" if _flag(r.get(f"{name}_lr_at_edge")) else "")
    return ppl, f"{r[f'{name}_delta_pct']:+.2f}%", lr, f"{r[f'{name}_rank']:.0f}"


def display_fair(t: pd.DataFrame) -> pd.DataFrame:
    out = {"model": t.model.tolist(), "G": t.G.astype(str).tolist()}
    labels = {"fixed": "fixed lr", "tuned": "best lr", "matched": "matched params"}
    for name in READINGS:
        cells = [_cell(t, name, i) for i in range(len(t))]
        for j, what in enumerate(("ppl", "Δ vs MHA", "lr", "rank")):
            out[f"{labels[name]}: {what}"] = [c[j] for c in cells]
        if name in ("tuned", "matched"):
            params = t.get(f"{name}_n_params_non_embedding", pd.Series(math.nan, index=t.index))
            out[f"{labels[name]}: params"] = [DASH if pd.isna(p) else f"{p / 1e3:.1f}K" for p in params]
    return pd.DataFrame(out)


def fair_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"fair": fair_table(runs)}


DISPLAY = {"fair": display_fair}
