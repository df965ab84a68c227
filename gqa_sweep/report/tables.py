"""Ablation tables from the runs: numeric DataFrames (CSV) and display DataFrames (Markdown, LaTeX).

Tables (each a raw numeric DataFrame, written as CSV, and a display DataFrame, written as Markdown/LaTeX):
- `ablation`: one row per (model size, G) of the from-scratch runs. Every statistic is taken over the
  *completed* runs only; diverged and failed runs are never averaged in, they are counted as k/N.
- `lr_sensitivity` (when a G was run at several learning rates): final val loss per lr, best lr and
  LR sensitivity = E_lr[min(loss(lr), loss_init) - min_lr min(loss(lr), loss_init)], loss_init = ln V.
The other tables (conversion, stability, recall, fair, layouts, variants, scaling) live in their own modules
and register their titles, notes and display functions here; `build_tables` collects every one the runs support."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from gqa_sweep.model.kv_formula import DTYPE_BYTES, kv_elements_per_layer
from gqa_sweep.report import conversion, fair, layouts, recall, scaling, stability, variants
from gqa_sweep.report.cells import (
    best_lr_at_edge,
    best_lr_runs,
    is_conversion,
    loss_by_lr,
    loss_init,
    mean_std,
    num,
    run_stats,
    status_counts,
)
from gqa_sweep.report.latex import latex_table
from gqa_sweep.report.load import DASH, prepare

NOT_MEASURED = "not measured"
CONTENDED = "contended"
EDGE = "⚠ edge of the grid: widen it"


TITLES = {
    "ablation": "GQA ablation: quality, stability, speed and KV-cache size vs G",
    "lr_sensitivity": "Learning-rate sensitivity per G",
    **stability.TITLES,
}
NOTES = {
    "ablation": (
        "val ppl: mean ± sample std (ddof=1) over the n completed runs (\"± —\" when n = 1); diverged and "
        "failed runs are never averaged, they are counted as k/N (N = all runs of the cell). "
        "KV % of MHA = 100·G/H, from KV bytes/token = 2·G·d_head·L·bytes (needs no MHA run). "
        "Δ ppl vs MHA: mean ppl relative to the mean ppl of the same model's G = H. "
        "Throughput: medians over the completed runs that had their cores to themselves; \"(k contended left "
        "out)\": k runs shared the machine (cpu_util < 0.75 or load > cores + 1, docs/metrics.md) and are not in "
        "the median; \"(contended)\": every run of the cell shared it, so the median is theirs: a lower bound, "
        "not comparable across G or machines. Grad-norm max: max over runs; loss spikes: mean count per run; "
        "both over completed runs. A cell run at several learning rates is shown at its best lr (see LR sensitivity); "
        f"\"{EDGE}\": that best lr is the lowest or highest lr tried, so a better one may lie outside the grid. "
        "\"(params matched: ffn)\": runs with d_ff widened to the MHA model's non-embedding parameter count "
        "(model.param_match=ffn), a model of their own whose Δ is taken against its G = H run (else the plain one's)."
    ),
    "lr_sensitivity": (
        "loss(lr): final val loss, mean over seeds, a diverged or failed run counting as loss_init = ln V "
        "(a uniform predictor). LR sensitivity = mean over the lr grid of min(loss(lr), loss_init) − "
        "min over lr of the same; 0 means every lr reached the best loss. Best lr: lowest loss(lr)."
    ),
    **stability.NOTES,
}




# ---------------------------------------------------------------------------------------------- tables


def _kv_bytes(cell: pd.DataFrame) -> float:
    measured = cell.kv_bytes_per_token.median()
    if not math.isnan(measured):
        return measured
    # A run that failed before measuring: the model's formula, bf16 unless kv_dtype says otherwise.
    r = cell.iloc[0]
    nbytes = DTYPE_BYTES.get(str(r.get("kv_dtype")).removeprefix("torch."), 2)
    return kv_elements_per_layer("gqa", int(r.n_kv_heads), int(r.d_head)) * r.n_layers * nbytes


def quiet(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose throughput counts: not marked contended (rows from before the mark count as quiet)."""
    return runs if "contended" not in runs else runs[runs.contended != 1]


def _speed(done: pd.DataFrame) -> dict:
    """Median throughput over the quiet runs; over the contended ones (flagged) when the cell has no quiet run."""
    calm = quiet(done)
    shared = calm.empty and not done.empty
    src = done if shared else calm
    return {
        "train_tokens_per_s_median": src.train_tokens_per_s.median(),
        "decode_tokens_per_s_median": src.decode_tokens_per_s.median(),
        "n_contended": len(done) - len(calm),
        "throughput_contended": shared,
    }


def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Raw numeric ablation table: one row per (model, G) of the from-scratch runs, ordered by size then G."""
    df = prepare(runs)
    df = df[~is_conversion(df)]
    rows = []
    df = df.assign(d_head=df.d_head.fillna(0))  # 0: not recorded (the groupby would drop the row)
    for (model, H, G, d_head), cell in df.groupby(["model", "n_heads", "n_kv_heads", "d_head"], observed=True):
        multi_lr, at_edge = cell.lr.nunique() > 1, best_lr_at_edge(cell)
        cell = best_lr_runs(cell)
        done = cell[cell.status == "completed"]
        # A head size other than d_model / H (experiment=kv_budget) is another model at the same G.
        odd_head = d_head and d_head * H != cell.d_model.iloc[0]
        rows.append({
            "model": str(model) + (f" (d_head={d_head:.0f})" if odd_head else ""),
            "n_heads": int(H), "G": int(G), "group_size": int(H // G),
            "n_params": cell.n_params.median(),
            "kv_bytes_per_token": _kv_bytes(cell),
            "kv_pct_of_mha": 100.0 * G / H,
            **run_stats(cell),
            "val_loss_mean": done.val_loss.mean(),
            # Throughput of runs that shared their cores: left out where quiet runs exist, else shown and flagged.
            **_speed(done),
            "grad_norm_max": done.grad_norm_max.max(),
            "loss_spikes_mean": done.loss_spikes.mean(),
            "lr": cell.lr.iloc[0] if cell.lr.nunique() == 1 else math.nan,
            "lr_selected": multi_lr,
            "best_lr_at_edge": at_edge,
            "param_match": cell.param_match.iloc[0],
            "d_ff": cell.d_ff.median() if "d_ff" in cell else math.nan,
            "base_model": cell.base_model.iloc[0],
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table.insert(
        table.columns.get_loc("val_ppl_std") + 1, "delta_ppl_vs_mha_pct",
        100.0 * (table.val_ppl_mean / mha_ppl(table) - 1.0),
    )
    return table.drop(columns="base_model")


def mha_ppl(table: pd.DataFrame) -> pd.Series:
    """Each row's MHA reference: G = H of the same model; a parameter-matched model (or one of another head size)
    without its own G = H run uses the plain model's (matching widens nothing at G = H)."""
    mha = table[table.G == table.n_heads]
    own = table.model.map(mha.set_index("model").val_ppl_mean)
    plain = mha[(mha.param_match == "none") & (mha.model == mha.base_model)].set_index("base_model").val_ppl_mean
    return own.astype(float).fillna(table.base_model.map(plain).astype(float))


def lr_sensitivity_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Loss per lr, best lr and LR sensitivity per (model, G); empty unless some G has several lrs."""
    df = prepare(runs)
    df = df[~is_conversion(df)]
    if df.empty or df.groupby(["model", "n_kv_heads"], observed=True).lr.nunique().max() <= 1:
        return pd.DataFrame()
    rows = []
    for (model, H, G), cell in df.groupby(["model", "n_heads", "n_kv_heads"], observed=True, sort=True):
        if cell.lr.nunique() < 2:  # a single lr has no sensitivity to speak of
            continue
        l0 = loss_init(cell)
        capped = loss_by_lr(cell).clip(upper=l0)
        row = {"model": str(model), "n_heads": int(H), "G": int(G)}
        row |= {f"loss_lr={lr:g}": loss for lr, loss in capped.items()}
        row |= {
            "best_lr": capped.idxmin() if capped.notna().any() else math.nan,
            "best_loss": capped.min(),
            "loss_init": l0,
            "best_lr_at_edge": best_lr_at_edge(cell),
            "lr_sensitivity": (capped - capped.min()).mean(),
            "n_lrs": len(capped),
            **status_counts(cell),
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    lr_cols = sorted((c for c in table if c.startswith("loss_lr=")), key=lambda c: float(c.split("=")[1]))
    rest = [c for c in table if not c.startswith("loss_lr=")]
    return table[rest[:3] + lr_cols + rest[3:]]


def build_tables(runs: pd.DataFrame, all_runs: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every table the runs support, name -> raw numeric DataFrame (only non-empty ones)."""
    every_type, runs = runs, variants.gqa_runs(runs)  # GTA / MLA runs only in the variants table
    plain = stability.baseline_runs(runs)  # G alone: runs with qk_norm / z_loss get the stability tables
    tables = {
        "ablation": ablation_table(plain),
        "lr_sensitivity": lr_sensitivity_table(plain),
        **conversion.conversion_tables(runs, all_runs),
        **stability.stability_tables(runs),
        **recall.recall_tables(runs),
        **fair.fair_tables(runs),
        **layouts.layouts_tables(runs),
        **variants.variants_tables(every_type),
    }
    return {k: t.reset_index(drop=True) for k, t in tables.items() if not t.empty}


# ------------------------------------------------------------------------------------------ formatting


def _measured(x: float, fmt: str, n_completed: int) -> str:
    """A cell whose completed runs did not measure it (too short for the spike window or the throughput
    warm-up) says so instead of a dash that reads as "no run" or a 0 that reads as "none"."""
    return NOT_MEASURED if n_completed and (x is None or pd.isna(x)) else num(x, fmt)


def _throughput(text: str, n_contended: int, shared: bool) -> str:
    if shared:
        return f"{text} ({CONTENDED})"
    return text if not n_contended else f"{text} ({n_contended} contended left out)"


def _si(n: float) -> str:
    if pd.isna(n):
        return DASH
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def display_ablation(t: pd.DataFrame) -> pd.DataFrame:
    """Display strings of the ablation table (Markdown/LaTeX)."""
    out = pd.DataFrame({
        "model": t.model,
        "G": t.G.astype(str),
        "H/G": t.group_size.astype(str),
        "params": t.n_params.map(_si),
        "KV B/token": t.kv_bytes_per_token.map(lambda x: num(x, ",.0f")),
        "KV % of MHA": t.kv_pct_of_mha.map(lambda x: num(x, ".1f") + "%"),
        "val ppl": [mean_std(m, s, n, ".2f") for m, s, n in zip(t.val_ppl_mean, t.val_ppl_std, t.n_completed)],
        "n": t.n_completed.astype(str),
        "Δ ppl vs MHA": t.delta_ppl_vs_mha_pct.map(lambda x: DASH if pd.isna(x) else f"{x:+.2f}%"),
        "train tok/s": [_throughput(_measured(x, ",.0f", n), k, c) for x, n, k, c in
                        zip(t.train_tokens_per_s_median, t.n_completed, t.n_contended, t.throughput_contended)],
        "decode tok/s": [_throughput(num(x, ",.0f"), k, c) for x, k, c in
                         zip(t.decode_tokens_per_s_median, t.n_contended, t.throughput_contended)],
        "grad-norm max": t.grad_norm_max.map(lambda x: num(x, ".2f")),
        "loss spikes": [_measured(x, ".2f", n) for x, n in zip(t.loss_spikes_mean, t.n_completed)],
        "diverged": [f"{k}/{n}" for k, n in zip(t.n_diverged, t.n_runs)],
        "failed": [f"{k}/{n}" for k, n in zip(t.n_failed, t.n_runs)],
    })
    if t.lr_selected.any():
        out["best lr"] = [_best_lr(x, edge) for x, edge in zip(t.lr, t.best_lr_at_edge)]
    if (t.param_match != "none").any():
        out.insert(4, "d_ff", t.d_ff.map(lambda x: num(x, ".0f")))
    return out



def _best_lr(lr: float, at_edge: bool) -> str:
    return num(lr, "g") + (f" {EDGE}" if at_edge else "")


def display_lr_sensitivity(t: pd.DataFrame) -> pd.DataFrame:
    lr_cols = [c for c in t if c.startswith("loss_lr=")]
    out = t[["model"]].assign(G=t.G.astype(str))
    for c in lr_cols:
        out[f"loss @ lr={c.split('=')[1]}"] = t[c].map(lambda x: num(x, ".3f"))
    return out.assign(**{
        "best lr": [_best_lr(x, edge) for x, edge in zip(t.best_lr, t.best_lr_at_edge)],
        "LR sensitivity": t.lr_sensitivity.map(lambda x: num(x, ".3f")),
        "loss_init (ln V)": t.loss_init.map(lambda x: num(x, ".3f")),
        "diverged": [f"{k}/{n}" for k, n in zip(t.n_diverged, t.n_runs)],
        "failed": [f"{k}/{n}" for k, n in zip(t.n_failed, t.n_runs)],
    })


DISPLAY: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "ablation": display_ablation,
    "lr_sensitivity": display_lr_sensitivity,
    **stability.DISPLAY,
}
# The recall table (data=mqar) is built and shown by report/recall.py.
for _module in (conversion, recall, fair, layouts, variants, scaling):  # scaling: built only by `gqa-report --scaling`
    TITLES.update(_module.TITLES)
    NOTES.update(_module.NOTES)
    DISPLAY.update(_module.DISPLAY)


def to_markdown(name: str, table: pd.DataFrame) -> str:
    """One table as a Markdown section: title, pipe table (tabulate), and how to read it."""
    body = DISPLAY[name](table).to_markdown(index=False, disable_numparse=True)
    return f"### {TITLES[name]}\n\n{body}\n\n{NOTES[name]}\n"


def to_latex(name: str, table: pd.DataFrame) -> str:
    """One table as a booktabs LaTeX `table` that pdflatex compiles (report/latex.py)."""
    return latex_table(DISPLAY[name](table), TITLES[name], f"tab:{name}")


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path, formats: Sequence[str]) -> list[Path]:
    """`<name>.md|.tex|.csv` per table under `out_dir`; CSVs hold the raw numbers (mean, std, n apart)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        for fmt in formats:
            path = out_dir / f"{name}.{ {'md': 'md', 'latex': 'tex', 'csv': 'csv'}[fmt] }"
            if fmt == "csv":
                table.to_csv(path, index=False)
            else:
                path.write_text(to_markdown(name, table) if fmt == "md" else to_latex(name, table) + "\n")
            written.append(path)
    return written
