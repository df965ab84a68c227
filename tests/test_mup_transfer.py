"""experiment=mup_transfer: the report's best lr, vertex, drift and verdict on known numbers, and a tiny grid end to
end (gqa-sweep -> the store's parametrization column -> gqa-report --transfer)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from gqa_sweep.report.cli import main as report_main
from gqa_sweep.report.transfer import followup_commands, transfer_best, transfer_drift, transfer_loss, verdict
from gqa_sweep.store.results import load_runs
from tests.conftest import TINY, gqa_sweep

LRS = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]


def runs(best: dict[tuple[str, int], float]) -> pd.DataFrame:
    """Synthetic rows: loss = 2 + (log2(lr / best))^2 / 10 per (parametrization, width), G = 1, seed 0."""
    rows = []
    for (p, width), b in best.items():
        for lr in LRS:
            config = {"model": {"mup_base_width": 32 if p == "mup" else None}}
            rows.append({"parametrization": None if p == "sp" else p, "n_kv_heads": 1, "d_model": width, "lr": lr,
                         "seed": 0, "status": "completed", "val_loss": 2 + math.log2(lr / b) ** 2 / 10,
                         "vocab_size": 65, "config": json.dumps(config)})  # fmt: skip
    rows[0]["status"], rows[0]["val_loss"] = "diverged", None  # sp, width 32, lr 1e-3: counted as ln V
    return pd.DataFrame(rows)


def test_best_lr_drift_and_verdict_on_known_numbers() -> None:
    data = runs({("sp", 32): 8e-3, ("sp", 64): 4e-3, ("sp", 256): 1e-3 * 1.2,
                 ("mup", 32): 4e-3, ("mup", 64): 4e-3, ("mup", 256): 4e-3 * 1.3})  # fmt: skip
    loss = transfer_loss(data)
    assert loss[(loss.parametrization == "sp") & (loss.width == 32) & (loss.lr == 1e-3)].val_loss.item() == (
        pytest.approx(math.log(65)))  # the diverged run (a NULL parametrization is sp)
    best = transfer_best(data).set_index(["parametrization", "width"])
    assert best.loc[("sp", 32)].best_lr == 8e-3 and best.loc[("sp", 256)].best_lr == 1e-3
    assert best.loc[("sp", 256)].at_edge and not best.loc[("mup", 256)].at_edge
    assert best.loc[("mup", 256)].vertex_lr == pytest.approx(4e-3 * 1.3)  # the parabola's vertex, exact here
    assert best.loc[("mup", 64)].base_width == 32
    drift = transfer_drift(best.reset_index()).set_index("parametrization")
    assert drift.loc["sp"].range_log2 == pytest.approx(3) and drift.loc["sp"].drift_log2 == pytest.approx(-3)
    assert drift.loc["mup"].range_log2 == 0 and drift.loc["mup"].width_ratio == 8
    text = verdict(drift.reset_index())
    assert "- mup, G=1: the best lr moves by 0 factor-2 step(s) over a 8x width range" in text
    assert "sp, G=1: the best lr moves by 3 factor-2 step(s)" in text and "does not transfer" in text
    cmds = followup_commands(best.reset_index())
    assert ("gqa-sweep -m experiment=mup_transfer model.parametrization=mup model.mup_base_width=32 "
            "model.d_model=64 model.n_kv_heads=1 optim.lr=0.002,0.004,0.008 seed=1,2") in cmds


def test_a_tiny_grid_end_to_end(tmp_path: Path) -> None:
    results = tmp_path / "results"
    tiny = [a for a in TINY if not a.startswith(("model.d_model=", "model.n_layers="))]
    args = [*tiny, "model.d_model=16,32", "model.n_kv_heads=1", "optim.lr=1e-2,2e-2,4e-2", "model.n_layers=1",
            "hydra/launcher=basic", f"results_dir={results}"]  # fmt: skip
    proc = gqa_sweep("-m", "experiment=mup_transfer", "model.parametrization=mup", "model.mup_base_width=16", *args,
                     cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    stored = load_runs(results)
    assert len(stored) == 6 and set(stored.parametrization) == {"mup"} and set(stored.status) == {"completed"}
    out = tmp_path / "report"
    assert report_main([str(results), "--transfer", "--out", str(out), "--format", "md", "--plots"]) == 0
    text = (out / "transfer.md").read_text()
    assert re.search(r"- mup, G=1: the best lr moves by \d factor-2 step\(s\) over a 2x width range", text), text
    assert "model.mup_base_width=16 model.d_model=32 model.n_kv_heads=1 optim.lr=" in text
    assert (out / "transfer_loss_vs_lr.png").stat().st_size > 10_000
