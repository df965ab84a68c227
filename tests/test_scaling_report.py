"""gqa-report --scaling on a synthetic ladder store: the five tables, the verdict line, the plots."""

import numpy as np
import pandas as pd
import pytest

from gqa_sweep.report.cli import main
from gqa_sweep.store.results import ResultsStore

SIZES = np.logspace(4.3, 5.3, 5)  # 20K-200K, 10x
S_G = {4: 1.0, 2: 0.85, 1: 0.7}  # M0 truth: G acts as s_G times MHA's parameters


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ladder")
    rng = np.random.default_rng(0)
    store = ResultsStore(path)
    i = 0
    for k, N in enumerate(SIZES):
        for G, s in S_G.items():
            for seed in range(2):
                loss = (3.0 + 40 * (s * N) ** -0.3) * np.exp(0.002 * rng.standard_normal())
                store.write_run({"run_id": f"r{i}", "sweep": "ladder", "status": "completed", "n_heads": 4,
                                 "n_kv_heads": G, "n_params_non_embedding": int(N), "val_loss": loss, "seed": seed,
                                 "model_name": f"ladder-s{k + 1}"})
                i += 1
    # a run of another sweep in the same store (the lr grid) and a diverged run: neither enters the fit
    store.write_run({"run_id": "lr0", "sweep": "ladder_lr", "status": "completed", "n_heads": 4, "n_kv_heads": 4,
                     "n_params_non_embedding": int(SIZES[0]), "val_loss": 9.0, "seed": 0, "model_name": "ladder-s1"})
    store.write_run({"run_id": "dv", "sweep": "ladder", "status": "diverged", "n_heads": 4, "n_kv_heads": 1,
                     "n_params_non_embedding": int(SIZES[4]), "val_loss": float("nan"), "seed": 5,
                     "model_name": "ladder-s5"})
    return path


def test_scaling_report_tables_and_verdict(store, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([str(store), "--scaling", "--draws", "200", "--out", str(out), "--plots"]) == 0
    text = capsys.readouterr().out
    for title in ("Scaling models M0-M3", "Held-out largest size", "Progressive check",
                  "Predicted loss gap vs MHA at scale", "CLA 1B: MQA +1.13 %"):
        assert title in text
    assert "Held-out check: M0: every G within 2%" in text
    assert (out / "scaling_verdict.md").read_text().startswith("Held-out check: M0: every G within 2%")
    fit = pd.read_csv(out / "scaling_fit.csv")
    assert set(fit["G"]) == {1, 2, 4}
    row = fit[fit["G"] == 1].iloc[0]
    assert row["s"] == pytest.approx(0.7, abs=0.03) and row["s_lo"] < row["s"] < row["s_hi"]
    hold = pd.read_csv(out / "scaling_holdout.csv")
    assert set(hold["model"]) == {"M0", "M1", "M2", "M3"} and (hold["size"] == "ladder-s5").all()
    m0 = hold[hold["model"] == "M0"]
    assert (m0["n_seeds"] == 2).all()  # the diverged run is not averaged in
    assert m0["beats_prev_size"].all() and m0["inside_pi"].all() and (m0["abs_rel_err"] < 0.01).all()
    ext = pd.read_csv(out / "scaling_extrapolation.csv")
    assert sorted(ext["N"].unique()) == [1e8, 1e9, 7e9] and ext["unreliable"].all()
    m0 = ext[(ext["N"] == 1e9) & (ext["G"] == 1)].iloc[0]
    assert m0["k"] == pytest.approx(1e9 / SIZES[-1], rel=1e-3)
    for name in ("scaling_loss_vs_n", "scaling_gap_vs_n", "scaling_residuals"):
        assert (out / f"{name}.png").exists()
    assert "extrapolated" in (out / "scaling_extrapolation.md").read_text()
    assert r"\toprule" in (out / "scaling_fit.tex").read_text()


def test_scaling_report_needs_replicates_or_sizes(tmp_path, capsys):
    store = ResultsStore(tmp_path)
    for k, N in enumerate(SIZES[:2]):
        store.write_run({"run_id": f"r{k}", "sweep": "ladder", "status": "completed", "n_heads": 4, "n_kv_heads": 4,
                         "n_params_non_embedding": int(N), "val_loss": 4.0, "seed": 0, "model_name": f"s{k}"})
    assert main([str(tmp_path), "--scaling", "--draws", "10"]) == 2
    assert "needs >= 4 sizes (fit >= 3 sizes, predict the next)" in capsys.readouterr().err


def test_two_ladders_are_fitted_apart_and_compared_side_by_side(tmp_path, capsys):
    """sp and muP ladders in one store (issue 30, item 4): never one fit; one table with each one's s_G."""
    truth = {"sp": {4: 1.0, 2: 0.85, 1: 0.7}, "mup": {4: 1.0, 2: 0.6, 1: 0.4}}
    store, rng, i = ResultsStore(tmp_path / "r"), np.random.default_rng(1), 0
    for p, s_g in truth.items():
        for k, N in enumerate(SIZES):
            for G, s in s_g.items():
                for seed in range(2):
                    loss = (3.0 + 40 * (s * N) ** -0.3) * np.exp(0.002 * rng.standard_normal())
                    config = {"model": {"name": f"ladder-s{k + 1}", "n_kv_heads": G, "parametrization": p},
                              "seed": seed, "sweep": "ladder"}  # fmt: skip
                    store.write_run({"run_id": f"r{i}", "sweep": "ladder", "status": "completed", "n_heads": 4,
                                     "n_kv_heads": G, "n_params_non_embedding": int(N), "val_loss": loss,
                                     "seed": seed, "model_name": f"ladder-s{k + 1}", "config": config})  # fmt: skip
                    i += 1
    out = tmp_path / "rep"
    assert main([str(tmp_path / "r"), "--scaling", "--draws", "100", "--out", str(out)]) == 0
    assert "differ in model.parametrization" in capsys.readouterr().out
    cmp = pd.read_csv(out / "scaling_compare.csv")
    assert sorted(set(cmp["ladder"])) == ["parametrization=mup", "parametrization=sp"] and len(cmp) == 6
    for p, s_g in truth.items():
        for G, s in s_g.items():
            cell = cmp[(cmp["ladder"] == f"parametrization={p}") & (cmp["G"] == G)].iloc[0]
            assert float(cell["s_G"].split()[0]) == pytest.approx(s, abs=0.05)
            assert float(cell["held-out error"].rstrip(" %")) < 1.0
