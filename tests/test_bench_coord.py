"""gqa-bench coord: under muP the activations are flat in width after step 1 (slope within +-0.1 on log-log);
under sp they grow. Tiny widths, few steps: seconds."""

from __future__ import annotations

import math

import pytest

from gqa_sweep.bench.cli import main as bench_main
from gqa_sweep.bench.coord import LAYERS, coord_table, slopes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mup_is_flat_in_width_and_sp_grows() -> None:
    # 1 layer, 3 seeds, an 8x range: seed noise in the slopes stays under 0.1 (it is ~0.05 at 64-256, 2 layers)
    mup = coord_table([64, 128, 256, 512], steps=3, lr=3e-3, seeds=3, n_layers=1, seq=32, parametrizations=("mup",))
    s = slopes(mup).set_index(["G", "step"])
    for G in (1, 4):
        for step in (1, 2, 3):
            assert all(abs(s.loc[(G, step)][k]) <= 0.1 for k in LAYERS), (G, step, s.loc[(G, step)].to_dict())
    assert math.isnan(s.loc[(1, 0)]["logits"])  # the zero-init readout: 0 logits at step 0, no slope
    assert len(mup) == 2 * 4 * 4  # G x widths x steps 0..3
    sp = slopes(coord_table([64, 256], steps=2, lr=3e-3, seeds=1, n_layers=1, seq=32, parametrizations=("sp",)))
    for _, row in sp[sp.step > 0].iterrows():
        assert row["attention"] > 0.8 and row["mlp"] > 0.8 and row["logits"] > 0.3, row.to_dict()


def test_the_command_writes_the_table_plot_and_slopes(tmp_path, capsys) -> None:
    rc = bench_main(["coord", "--widths", "32", "64", "--steps", "1", "--seeds", "1", "--n-layers", "1",
                     "--seq", "16", "--batch", "2", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    md = (tmp_path / "coord.md").read_text()
    assert "| parametrization   |   G |   step |" in md and "mean of 1 seeds" in md
    assert (tmp_path / "coord.png").stat().st_size > 10_000 and (tmp_path / "coord.csv").exists()


def test_bad_widths_name_the_fix(capsys) -> None:
    assert bench_main(["coord", "--widths", "64", "100"]) == 2
    assert "multiples of 2 x n_heads = 8" in capsys.readouterr().err
