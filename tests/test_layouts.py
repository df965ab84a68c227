"""Per-layer G end to end: a sweep over layouts trains, records `kv_layout`, and the report's layouts table."""

from __future__ import annotations

import pandas as pd
import pytest

from gqa_sweep.report import main as report
from gqa_sweep.report.layouts import layouts_table
from gqa_sweep.store.results import ResultsStore, load_runs
from tests.conftest import TINY, gqa_sweep
from tests.test_report import _row


def test_a_layout_sweep_trains_records_and_reports(tmp_path):
    results = tmp_path / "results"
    proc = gqa_sweep("-m", *TINY, f"results_dir={results}", "model.n_layers=2", "model.n_kv_heads=[4,1],[1,4],[2,2]",
                     "sweep=layouts", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = load_runs(results).set_index("kv_layout")
    assert sorted(runs.index) == ["1,4", "2,2", "4,1"]
    assert runs.n_kv_heads.isna().tolist() == [not layout.startswith("2") for layout in runs.index]
    assert runs.loc["2,2", "n_kv_heads"] == 2 and runs.loc["2,2", "run_name"] == "H8-G2-s0"
    assert runs.loc["4,1", "run_name"] == "H8-G4.1-s0"
    d_head = 32 // 8
    for layout in ("4,1", "1,4"):  # fp32 cache: 2 * (4 + 1) * d_head * 4 bytes
        assert runs.loc[layout, "kv_bytes_per_token"] == 2 * 5 * d_head * 4
        assert runs.loc[layout, "status"] == "completed"
    assert report([str(results), "--out", str(tmp_path / "report")]) == 0
    shown = (tmp_path / "report" / "layouts.md").read_text()
    assert "| 4,1 " in shown and "| 2,2 (uniform)" in shown


H8 = dict(model_name="tiny", n_heads=8, d_model=64, d_head=8, n_layers=4, vocab_size=256)
LAYOUTS = {  # (layout, d_head) -> ppl of seeds 0, 1
    ("2,2,2,2", 8): (10.0, 12.0),
    ("4,2,1,1", 8): (12.0, 12.0),
    ("1,1,2,4", 8): (9.0, 13.0),
    ("1,1,1,1", 16): (10.5, 11.5),
}


def test_layouts_table_hand_checked(tmp_path):
    store = ResultsStore(tmp_path)
    for (layout, d_head), ppls in LAYOUTS.items():
        heads = sum(map(int, layout.split(",")))
        for seed, ppl in enumerate(ppls):
            row = _row("kv_budget", {**H8, "d_head": d_head}, 2, seed, "completed", ppl)
            row |= {"run_id": f"{layout}-{d_head}-{seed}", "kv_layout": layout, "kv_bytes_per_token": 2 * heads * d_head * 4,
                    "n_kv_heads": None if len(set(layout.split(","))) > 1 else int(layout[0])}  # fmt: skip
            store.write_run(row)
    t = layouts_table(load_runs(tmp_path)).set_index(["layout", "d_head"])
    assert (t.kv_bytes_per_token == 2 * 8 * 8 * 4).all()  # the same KV budget in every layout
    assert t.delta_ppl_vs_uniform_pct.to_dict() == pytest.approx({
        ("2,2,2,2", 8): 0.0, ("4,2,1,1", 8): 100 * (12 / 11 - 1), ("1,1,2,4", 8): 0.0, ("1,1,1,1", 16): 0.0,
    })  # fmt: skip
    assert bool(t.loc[("2,2,2,2", 8), "uniform"]) and not bool(t.loc[("1,1,1,1", 16), "default_d_head"])


def test_no_layouts_table_for_uniform_runs_only(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_run({**_row("g", H8, 2, 0, "completed", 10.0), "kv_layout": "2,2,2,2"})
    assert layouts_table(load_runs(tmp_path)).empty
    assert layouts_table(pd.DataFrame({"run_id": ["x"]})).empty


def test_kv_budget_layouts_spend_the_same_kv_bytes_per_token():
    from hydra import compose, initialize_config_dir

    from gqa_sweep.config import model_shape
    from gqa_sweep.spec import resolved
    from tests.conftest import ROOT

    bytes_per_token, params = {}, {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for layout in ("uniform", "front", "back", "fewer_wider", "more_narrower"):
            cfg = compose("config", overrides=["experiment=kv_budget", f"kv_layout={layout}"], return_hydra_config=False)
            model = model_shape(resolved(cfg))
            bytes_per_token[layout] = model.kv_bytes_per_token(4)
            params[layout] = model.kv_layout, model.d_head
        sweep = compose("config", overrides=["experiment=kv_budget"], return_hydra_config=True).hydra.sweeper.params
    assert set(bytes_per_token.values()) == {2 * 8 * 16 * 4}  # 2 * sum_l G_l * d_head * fp32, every layout
    assert params == {"uniform": ("2,2,2,2", 16), "front": ("4,2,1,1", 16), "back": ("1,1,2,4", 16),
                      "fewer_wider": ("1,1,1,1", 32), "more_narrower": ("4,4,4,4", 8)}  # fmt: skip
    assert sweep["model.n_kv_heads"] is None  # the default `all` sweep is dropped (the layouts set G)
