"""The table of scripts/gpu-check.sh: one row per step (status, seconds, the figures it measured).

    python -m gqa_sweep.report.gpu_check STEPS_TSV > gpu-check.md

STEPS_TSV has one line per step: name, status, seconds, kind, source, what (tab-separated; the script writes
it). `kind` says how to read `source`: `runs` a results dir (one figure per run, from its rows), `csv` a
gqa-bench table, `log` a pytest log (its closing line). Only figures that were measured are printed: a step
that failed, timed out or was absent says so and shows none.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from gqa_sweep.store.results import load_runs


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _si(v: float, unit: str = "") -> str:
    """1234567 -> 1.23M (tok/s and the like), NaN -> —."""
    if not math.isfinite(v):
        return "—"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}{unit}"
    return f"{v:.3g}{unit}"


def run_figure(r: pd.Series) -> str:
    """One run's figures: its G, status, train tok/s, MFU (of the datasheet on a known GPU), compile time,
    val ppl; where it failed, the phase and step and the error's first line."""
    g = r.get("n_kv_heads")
    name = f"B{int(r.batch_size)} G={int(g)}" if pd.notna(g) else str(r.get("run_name"))
    if r.status == "failed":
        first = str(r.get("error") or "").splitlines()[0][:160]
        return f"{name} failed ({r.get('failed_phase')} step {r.get('failed_step')}): {first}"
    parts = [f"{_si(_num(r.get('train_tokens_per_s')))} tok/s",
             f"MFU {_num(r.get('mfu')):.3f} of {r.get('peak_source')} {_si(_num(r.get('peak_flops')), 'FLOP/s')}",
             f"matmul peak measured {_si(_num(r.get('peak_flops_measured')), 'FLOP/s')}",
             f"val ppl {_num(r.get('val_ppl')):.2f}"]  # fmt: skip
    if pd.notna(r.get("compile_s")):
        parts.insert(1, f"compile {_num(r.get('compile_s')):.0f} s")
    if pd.notna(r.get("gpu_others")):
        parts.append(f"other GPU processes {int(r.gpu_others)}")
    if pd.notna(r.get("vocab_size")):  # BPE 32,768 trained on tiny Shakespeare stops short of 32,768
        parts.append(f"vocab {int(r.vocab_size):,}")
    return f"{name} {r.status}: " + ", ".join(parts)


def runs_figures(results_dir: str) -> str:
    runs = load_runs(results_dir)
    if runs.empty:
        return "no rows"
    runs = runs.sort_values(["batch_size", "n_kv_heads"], na_position="last")
    return "; ".join(run_figure(r) for _, r in runs.iterrows())


# Columns worth a look per gqa-bench table, by name pattern (others stay in the CSV).
CSV_COLUMNS = {
    "decode.csv": ("G", "folded_tok_s", "folded_GBps", "folded_hbm_frac", "hf_tok_s"),
    "serve.csv": ("G", "max_batch", "batch", "tokens_per_s", "ms_per_token"),
    "peak.csv": ("dtype", "peak_GFLOPs", "source", "measured_GFLOPs", "measured_of_datasheet"),
    "train.csv": ("G", "harness_tok_s", "bare_tok_s", "hf_tok_s", "harness_mfu"),
}


def csv_figures(path: str) -> str:
    p = Path(path)
    if not p.exists():
        return f"no {p.name}"
    df = pd.read_csv(p)
    wanted = [c for c in CSV_COLUMNS.get(p.name, ()) if c in df.columns] or list(df.columns[:5])
    if p.name == "serve.csv" and "max_batch" in df.columns:  # the largest batch of each G
        df = df.sort_values("batch").groupby("G").tail(1)
    rows = []
    for _, r in df[wanted].iterrows():
        rows.append(" ".join(f"{c}={v:.4g}" if isinstance(v, float) else f"{c}={v}" for c, v in r.items()))
    return "; ".join(rows)


def log_figures(path: str) -> str:
    """The pytest log's closing line (`3 passed, 1 skipped in 40.1s`)."""
    p = Path(path)
    text = p.read_text(errors="replace") if p.exists() else ""
    lines = [line.strip("= ") for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


READERS = {"runs": runs_figures, "csv": csv_figures, "log": log_figures}


def table(steps_tsv: str) -> str:
    rows = []
    for line in Path(steps_tsv).read_text().splitlines():
        if not line.strip():
            continue
        name, status, seconds, kind, source, what = line.split("\t", 5)
        figures = ""
        if status == "ok" or (status.startswith("failed") and kind in ("runs", "log")):
            try:
                figures = READERS[kind](source)
            except Exception as e:  # a figure that cannot be read is said, not guessed
                figures = f"could not read {source}: {e.__class__.__name__}: {e}"
        rows.append([name, what, status, seconds, figures])
    # By hand, not DataFrame.to_markdown: the lent GPU machine need not have `tabulate`.
    lines = ["| step | what | status | s | figures |", "| --- | --- | --- | ---: | --- |"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m gqa_sweep.report.gpu_check STEPS_TSV", file=sys.stderr)
        return 2
    print(table(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
