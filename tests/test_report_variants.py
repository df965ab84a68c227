"""gqa-report's variants table: the attention type from the row's config JSON, mean ± std, Pareto, Δ vs MHA."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from gqa_sweep.report import main as report
from gqa_sweep.report.tables import build_tables
from gqa_sweep.report.variants import attention_of, variants_table
from gqa_sweep.store.results import ResultsStore, load_runs

TINY = {"model_name": "tiny", "n_heads": 8, "d_model": 128, "d_head": 16, "n_layers": 2, "vocab_size": 65}
# variant -> (attention, G, d_c, elements per token per layer, ppl per seed)
CASES = {
    "MHA": ("gqa", 8, None, 256, (7.00, 7.10, 7.05)),
    "GQA-2": ("gqa", 2, None, 64, (7.20, 7.30, 7.25)),
    "GTA-2": ("gta", 2, None, 40, (7.10, 7.20, 7.15)),
    "MLA-64": ("mla", 8, 64, 72, (7.00, 7.05, None)),  # one failed seed
}


def write_store(path) -> None:
    store = ResultsStore(path)
    for name, (att, G, d_c, elements, ppls) in CASES.items():
        for seed, ppl in enumerate(ppls):
            model = {"attention": att, "n_kv_heads": G, "kv_lora_rank": d_c}
            if att == "gqa" and seed == 0:
                model = {"n_kv_heads": G}  # a run stored before the variants: no attention key at all
            store.write_run({
                "run_id": f"{name}-{seed}", "sweep": "kv_variants", "status": "failed" if ppl is None else "completed",
                **TINY, "n_kv_heads": G, "seed": seed, "lr": 3e-3, "n_params": 410_000, "val_ppl": ppl,
                "val_loss": None if ppl is None else math.log(ppl), "kv_bytes_per_token": elements * 2 * 2,
                "started_at": f"2026-12-01T00:00:{seed:02d}", "config": {"model": model},
            }, ())  # fmt: skip


def test_variants_table_reads_the_type_from_config_and_finds_the_pareto_front(tmp_path) -> None:
    write_store(tmp_path)
    runs = load_runs(tmp_path)
    types = dict(zip(runs.run_id, attention_of(runs)))
    assert types == {f"{name}-{seed}": case[0] for name, case in CASES.items() for seed in range(3)}
    t = variants_table(runs).set_index("variant")
    assert list(t.index) == ["GTA-2", "GQA-2", "MLA-64", "MHA"]  # by KV bytes per token
    assert t.kv_bytes_per_token.tolist() == [160, 256, 288, 1024]
    assert t.loc["MLA-64", ["n_completed", "n_runs"]].tolist() == [2, 3]
    assert t.loc["GTA-2", "val_ppl_mean"] == pytest.approx(7.15)
    assert t.loc["GTA-2", "val_ppl_std"] == pytest.approx(0.05)
    assert t.loc["MLA-64", "delta_ppl_vs_mha_pct"] == pytest.approx(100 * (7.025 / 7.05 - 1))
    assert t.pareto.to_dict() == {"GTA-2": True, "GQA-2": False, "MLA-64": True, "MHA": False}
    assert pd.isna(t.loc["MLA-64", "G"]) and t.loc["GTA-2", "G"] == 2


def test_g_ablation_sees_only_gqa_runs_and_the_report_writes_table_and_plot(tmp_path) -> None:
    write_store(tmp_path / "results")
    tables = build_tables(load_runs(tmp_path / "results"))
    assert sorted(tables["ablation"].G) == [2, 8]  # MLA's G = H row is not mixed into MHA's cell
    assert tables["ablation"].set_index("G").loc[8, "n_runs"] == 3
    out = tmp_path / "report"
    assert report([str(tmp_path / "results"), "--out", str(out), "--plots"]) == 0
    md = (out / "variants.md").read_text()
    row = next(line for line in md.splitlines() if "| MLA-64" in line)
    assert [c.strip() for c in row.split("|")[3:9]] == ["288", "410.0K", "7.025 ± 0.035", "2/3", "-0.35%", "✓"]
    assert "7.150 ± 0.050" in md
    assert (out / "variants_ppl_vs_kv_bytes.png").stat().st_size > 1000


def test_no_variants_table_without_gta_or_mla_runs(tmp_path) -> None:
    store = ResultsStore(tmp_path)
    store.write_run({"run_id": "a", "sweep": "s", "status": "completed", **TINY, "n_kv_heads": 2, "val_ppl": 7.0,
                     "config": {"model": {"n_kv_heads": 2}}}, ())  # fmt: skip
    assert variants_table(load_runs(tmp_path)).empty
