"""The `variants` table and plot: val ppl against KV bytes per token per attention type (MHA/GQA/MQA, GTA, MLA).

Written when some run has model.attention = gta or mla (`experiment=kv_variants`). The attention type is read
from a row's `attention` column when the store has one, else from its `config` JSON (config.model.attention,
gqa when absent: every run before the variants). One row per (model, variant): mean ± sample std of val ppl over
the completed seeds at the cell's best lr (when an lr grid was run), its KV bytes per token, whether it is on the
Pareto front (no other variant has fewer or equal bytes and a lower mean ppl), and Δ against MHA.
The G-ablation tables see only GQA runs (`gqa_runs`): an MLA run (G = H in its row) is not an MHA run.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gqa_sweep.report.cells import best_lr_runs, is_conversion, mean_std, num, run_stats
from gqa_sweep.report.load import DASH, prepare

TITLES = {"variants": "Attention variants at their KV bytes per token: MHA / GQA / MQA, GTA and MLA"}
NOTES = {
    "variants": (
        "variant: MHA (G = H), GQA-G, MQA (G = 1), GTA-G (grouped-tied: one K/V state per group + a d_R RoPE key "
        "shared by all heads), MLA-d_c (latent d_c + d_R RoPE key). KV B/token per layer: GQA 2·G·d_head, GTA "
        "G·d_head + d_R, MLA d_c + d_R, times layers and bytes per element (docs/metrics.md). val ppl: mean ± "
        "sample std over the completed seeds (n/N runs), at the cell's best lr when several were run (lr column). "
        "Δ vs MHA: 100 · (mean ppl / MHA's − 1). Pareto ✓: no variant has ≤ bytes and a lower mean ppl."
    ),
}


def _config_model(cfg) -> dict:
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            return {}
    return cfg.get("model", {}) if isinstance(cfg, dict) else {}


def model_key(runs: pd.DataFrame, key: str, default=None) -> pd.Series:
    """A model setting per run: its own column when the store has one, else config.model.<key>, else default."""
    from_config = runs["config"].map(lambda c: _config_model(c).get(key, default)) if "config" in runs else None
    if key in runs:
        own = runs[key].astype(object)
        return own.where(own.notna(), from_config if from_config is not None else default)
    return from_config if from_config is not None else pd.Series(default, index=runs.index, dtype=object)


def attention_of(runs: pd.DataFrame) -> pd.Series:
    return model_key(runs, "attention", "gqa").fillna("gqa").astype(str)


def gqa_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of plain grouped-query attention (what every G-ablation table compares)."""
    return runs[attention_of(runs) == "gqa"].reset_index(drop=True) if len(runs) else runs


def _label(attention: str, G, H, d_c) -> str:
    if attention == "mla":
        return f"MLA-{int(d_c)}" if pd.notna(d_c) else "MLA"
    if attention == "gta":
        return f"GTA-{int(G)}"
    return "MHA" if G == H else "MQA" if G == 1 else f"GQA-{int(G)}"


def variants_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, variant), ordered by KV bytes per token; empty unless a GTA or MLA run exists."""
    if runs.empty or not (attention_of(runs) != "gqa").any():
        return pd.DataFrame()
    df = prepare(runs).assign(attention=attention_of(runs).to_numpy())
    d_c = pd.to_numeric(model_key(runs, "kv_lora_rank"), errors="coerce").to_numpy()
    df = df.assign(d_c=pd.Series(d_c, index=df.index).fillna(4 * df.d_head))  # null: ModelConfig's 4 d_head
    # MLA rows have no G (n_kv_heads is null since rows carry `attention`; older MLA rows recorded H).
    df = df[~is_conversion(df) & (df.n_kv_heads.notna() | (df.attention == "mla"))]
    df = df.assign(variant=[_label(a, G, H, c) for a, G, H, c in zip(df.attention, df.n_kv_heads, df.n_heads, df.d_c)])
    rows = []
    for (model, variant), cell in df.groupby(["model", "variant"], observed=True, sort=False):
        best = best_lr_runs(cell)
        G = None if best.attention.iloc[0] == "mla" else int(best.n_kv_heads.iloc[0])
        rows.append({
            "model": str(model), "variant": variant, "attention": best.attention.iloc[0], "G": G,
            "kv_bytes_per_token": best.kv_bytes_per_token.median(), "n_params": best.n_params.median(),
            "lr": best.lr.iloc[0], "n_lrs": cell.lr.nunique(), **run_stats(best),
        })  # fmt: skip
    table = pd.DataFrame(rows).sort_values(["model", "kv_bytes_per_token", "val_ppl_mean"], ignore_index=True)
    mha = table[table.variant == "MHA"].set_index("model").val_ppl_mean
    table["delta_ppl_vs_mha_pct"] = 100.0 * (table.val_ppl_mean / table.model.map(mha) - 1.0)
    table["pareto"] = [
        not ((t.kv_bytes_per_token <= r.kv_bytes_per_token) & (t.val_ppl_mean < r.val_ppl_mean)).any()
        for _, r in table.iterrows() for t in [table[(table.model == r.model) & (table.index != r.name)]]
    ]  # fmt: skip
    return table


def display_variants(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": t.model, "variant": t.variant,
        "KV B/token": t.kv_bytes_per_token.map(lambda x: num(x, ",.0f")),
        "params": t.n_params.map(lambda x: num(x / 1e3, ".1f") + "K"),
        "val ppl": [mean_std(m, s, n) for m, s, n in zip(t.val_ppl_mean, t.val_ppl_std, t.n_completed)],
        "n": [f"{n}/{N}" for n, N in zip(t.n_completed, t.n_runs)],
        "Δ vs MHA": t.delta_ppl_vs_mha_pct.map(lambda x: DASH if pd.isna(x) else f"{x:+.2f}%"),
        "Pareto": t.pareto.map(lambda p: "✓" if p else ""),
        "lr": [num(lr, "g") + (f" (best of {k})" if k > 1 else "") for lr, k in zip(t.lr, t.n_lrs)],
    })  # fmt: skip


def variants_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"variants": variants_table(runs)}


DISPLAY = {"variants": display_variants}
MARKERS = {"gqa": "o", "gta": "s", "mla": "^"}
NAMES = {"gqa": "MHA / GQA / MQA", "gta": "GTA", "mla": "MLA"}


def plot_variants(table: pd.DataFrame) -> Figure:
    """The Pareto picture per variant: val ppl (mean ± std) against KV bytes per token, one marker per type."""
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for (model, att), t in table[table.val_ppl_mean.notna()].groupby(["model", "attention"], sort=False):
        label = NAMES[att] + (f" ({model})" if table.model.nunique() > 1 else "")
        ax.errorbar(t.kv_bytes_per_token, t.val_ppl_mean, yerr=t.val_ppl_std.fillna(0), marker=MARKERS[att],
                    linestyle="-" if att == "gqa" else "none", capsize=3, label=label)  # fmt: skip
        for x, y, v in zip(t.kv_bytes_per_token, t.val_ppl_mean, t.variant):
            ax.annotate(v, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log", base=2)
    ticks = np.unique(table.kv_bytes_per_token.dropna())
    ax.set_xticks(ticks, [f"{x:,.0f}" for x in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("KV cache bytes / token")
    ax.set_ylabel("val perplexity (mean ± std over seeds)")
    ax.set_title("Attention variants: quality vs KV-cache size (lower-left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def variants_plots(runs: pd.DataFrame) -> dict[str, Figure]:
    table = variants_table(runs)
    return {} if table.empty else {"variants_ppl_vs_kv_bytes": plot_variants(table)}
