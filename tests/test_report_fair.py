"""The fair table: Δ ppl vs MHA at MHA's lr, at each G's best lr and at matched parameters, hand-checked."""

from __future__ import annotations

import math

import pytest

from gqa_sweep.report.fair import display_fair, fair_table
from gqa_sweep.store.results import ResultsStore, load_runs
from tests.test_report import _row

H2 = dict(model_name="h2", n_heads=2, d_model=16, d_head=8, n_layers=1, vocab_size=256)
# (param_match, G, lr) -> val ppl of seeds 0 and 1
PPL = {
    ("none", 2, 1e-3): (10.0, 12.0),
    ("none", 2, 3e-3): (9.0, 9.0),  # MHA's best lr: the fixed reading's lr
    ("none", 1, 1e-3): (10.0, 10.0),  # G=1's own best lr, the lowest of the grid
    ("none", 1, 3e-3): (11.0, 13.0),
    ("ffn", 1, 1e-3): (8.0, 9.0),
    ("ffn", 1, 3e-3): (9.2, 9.2),
}


def _runs(tmp_path, keys=PPL):
    store = ResultsStore(tmp_path)
    for (match, G, lr), ppls in keys.items():
        for seed, ppl in enumerate(ppls):
            row = _row("fair", H2, G, seed, "completed", ppl, lr=lr, param_match=match,
                       n_params_non_embedding=1000 + 100 * G + (300 if match == "ffn" else 0))  # fmt: skip
            store.write_run({**row, "run_id": f"{match}-{G}-{lr:g}-{seed}"})
    return load_runs(tmp_path)


def test_three_readings_hand_checked(tmp_path):
    t = fair_table(_runs(tmp_path)).set_index("G")
    assert t.fixed_lr.tolist() == [3e-3, 3e-3]
    assert t.fixed_val_ppl_mean.tolist() == pytest.approx([12.0, 9.0])
    assert t.fixed_delta_pct[1] == pytest.approx(100 * (12 / 9 - 1))
    assert t.tuned_lr.tolist() == [1e-3, 3e-3] and t.tuned_lr_at_edge.tolist() == [True, True]
    assert t.tuned_delta_pct[1] == pytest.approx(100 * (10 / 9 - 1))
    assert t.tuned_val_ppl_std[1] == 0.0 and t.tuned_val_ppl_std[2] == 0.0
    # Matched: G=1 widened beats MHA (8.5 vs 9): the ranking flips against the two plain readings.
    assert t.matched_val_ppl_mean[1] == pytest.approx(8.5) and t.matched_lr[1] == 1e-3
    assert t.matched_delta_pct[1] == pytest.approx(100 * (8.5 / 9 - 1))
    assert t.matched_val_ppl_std[1] == pytest.approx(math.sqrt(0.5))
    assert t.fixed_rank.tolist() == [2, 1] and t.tuned_rank.tolist() == [2, 1] and t.matched_rank.tolist() == [1, 2]
    assert t.matched_n_params_non_embedding.tolist() == [1400, 1200]
    shown = display_fair(t.reset_index()).set_index("G")
    assert shown.loc["1", "matched params: ppl"] == "8.500 ± 0.707 (2/2)"
    assert shown.loc["1", "matched params: Δ vs MHA"] == "-5.56%"
    assert shown.loc["1", "best lr: lr"] == "0.001 ⚠ edge" and shown.loc["1", "fixed lr: lr"] == "0.003"


def test_without_matched_runs_the_reading_says_not_run(tmp_path):
    t = fair_table(_runs(tmp_path, {k: v for k, v in PPL.items() if k[0] == "none"}))
    shown = display_fair(t).set_index("G")
    assert shown.loc["1", "matched params: ppl"] == "not run"
    assert shown.loc["2", "matched params: Δ vs MHA"] == "+0.00%"  # MHA is its own parameter-matched model


def test_no_table_without_an_lr_grid(tmp_path):
    one_lr = {k: v for k, v in PPL.items() if k[2] == 3e-3 and k[0] == "none"}
    assert fair_table(_runs(tmp_path, one_lr)).empty
