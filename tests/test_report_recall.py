"""Recall report: exact figures of the G x segment table (best lr, fixed lr) and the position-loss plot data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from gqa_sweep.report.recall import (
    display_recall,
    position_losses,
    recall_plots,
    recall_table,
)
from gqa_sweep.store.results import RUN_COLUMNS

CONFIG = json.dumps({"data": {"train_segments": [[32, 4]], "seq_len": 64, "num_kv_pairs": 4}})


def mqar_row(G: int, seed: int, lr: float, acc_easy: float, acc_hard: float, status: str = "completed") -> dict:
    per = [{"segment": "T32-K4", "seq_len": 32, "num_kv_pairs": 4, "acc": acc_easy, "n": 100},
           {"segment": "T64-K16", "seq_len": 64, "num_kv_pairs": 16, "acc": acc_hard, "n": 400}]
    return {"run_id": f"m{G}{seed}{lr}", "status": status, "model_name": "tiny", "n_heads": 4, "n_kv_heads": G,
            "n_layers": 2, "d_model": 64, "n_params": 1000 + G, "seed": seed, "lr": lr, "data_name": "mqar",
            "init": "scratch", "config": CONFIG, "recall_acc": (100 * acc_easy + 400 * acc_hard) / 500,
            "recall_acc_by_segment": json.dumps(per), "val_loss_by_pos": json.dumps([None] * 8), "block_size": 64}


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).reindex(columns=list(RUN_COLUMNS))


def test_recall_table_best_and_fixed_lr():
    rows = [
        mqar_row(4, 0, 1e-3, 1.0, 0.5), mqar_row(4, 1, 1e-3, 0.9, 0.7),     # MHA, lr 1e-3: easy .95, hard .6
        mqar_row(4, 0, 3e-3, 0.2, 0.8), mqar_row(4, 1, 3e-3, 0.4, 0.8),     # MHA, lr 3e-3: easy .3, hard .8
        mqar_row(1, 0, 1e-3, 0.8, 0.2), mqar_row(1, 1, 1e-3, 0.6, 0.4),     # MQA, lr 1e-3
        mqar_row(1, 0, 3e-3, 0.1, 0.1), mqar_row(1, 1, 3e-3, 9.9, 9.9, status="diverged"),  # never averaged
    ]
    t = recall_table(frame(rows)).set_index(["G", "segment"])
    # Fixed lr: best mean recall_acc over all completed runs: 1e-3 (0.525) beats 3e-3 (0.5).
    assert set(t.fixed_lr) == {1e-3}
    assert t.loc[(4, "T32-K4"), "best_lr"] == 1e-3 and t.loc[(4, "T64-K16"), "best_lr"] == 3e-3
    assert t.loc[(4, "T64-K16"), "acc_best_mean"] == pytest.approx(0.8)
    assert t.loc[(4, "T64-K16"), "acc_fixed_mean"] == pytest.approx(0.6)
    assert t.loc[(4, "T64-K16"), "acc_fixed_std"] == pytest.approx(0.1414213, rel=1e-5)
    assert t.loc[(1, "T32-K4"), ["acc_best_mean", "n_best", "n_runs"]].tolist() == pytest.approx([0.7, 2, 4])
    assert bool(t.loc[(1, "T64-K16"), "test_only"]) and not bool(t.loc[(1, "T32-K4"), "test_only"])
    shown = display_recall(recall_table(frame(rows)))
    assert shown.G.tolist() == ["1", "4"]
    assert shown.loc[shown.G == "4", "T64-K16 (test only) best lr"].item() == "0.800 ± 0.000 (0.003)"
    assert shown.loc[shown.G == "1", "T32-K4 @ lr=0.001"].item() == "0.700 ± 0.141"


def test_position_losses_per_g_at_best_lr():
    def text_row(G, seed, lr, val_loss, buckets):
        return {"run_id": f"t{G}{seed}{lr}", "status": "completed", "model_name": "tiny", "n_heads": 2,
                "n_kv_heads": G, "n_layers": 2, "d_model": 64, "n_params": 1000, "seed": seed, "lr": lr,
                "data_name": "shakespeare", "init": "scratch", "val_loss": val_loss, "block_size": 16,
                "val_loss_by_pos": json.dumps(buckets)}

    rows = [text_row(2, 0, 1e-3, 2.0, [3.0, 2.0]), text_row(2, 1, 1e-3, 2.0, [3.2, 2.2]),
            text_row(2, 0, 1e-2, 5.0, [9.0, 9.0]), text_row(1, 0, 1e-3, 2.1, [3.1, 2.5])]
    pos = position_losses(frame(rows)).set_index(["G", "bucket"])
    assert pos.loc[(2, 0), "loss"] == pytest.approx(3.1) and pos.loc[(2, 1), "loss"] == pytest.approx(2.1)
    assert pos.loc[(1, 1), "loss"] == pytest.approx(2.5)
    figs = recall_plots(frame(rows))
    assert list(figs) == ["loss_vs_position"]
    _, gap = figs["loss_vs_position"].axes
    g1 = next(line for line in gap.lines if line.get_label() == "G=1")
    assert g1.get_xdata().tolist() == [4.0, 12.0] and g1.get_ydata().tolist() == pytest.approx([0.0, 0.4])
