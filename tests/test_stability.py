"""Stability mitigations and their report: z-loss against a hand computation, qk_norm / z_loss in the rows of a
real run, and the stability tables and plots (LR sensitivity per G and mitigation) from a hand-built store."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from gqa_sweep.report import build_tables, main, make_plots
from gqa_sweep.report.stability import mitigation, stability_plots
from gqa_sweep.store.results import ResultsStore, load_history, load_runs
from gqa_sweep.train.checkpoint import load_model
from gqa_sweep.train.module import LMModule
from tests.conftest import TINY, gqa_sweep

V = 65
L0 = math.log(V)  # loss at initialisation: what a diverged run counts as, and the cap
LRS = (1e-3, 1e-2, 1e-1)
DIVERGED = None
# (G, qk_norm) -> final val loss per seed (rows) and lr (columns); None = diverged. 5.0 > ln V gets capped.
LOSSES = {
    (1, 0): [[2.5, 2.0, DIVERGED], [2.7, 2.2, 5.0]],
    (1, 1): [[2.4, 2.0, 2.3], [2.6, 2.2, 2.5]],
    (4, 0): [[2.5, 2.0, 3.0], [2.5, 2.0, 3.0]],
    (4, 1): [[2.4, 1.9, 2.2], [2.4, 1.9, 2.2]],
}


# --- z-loss -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coef", [0.0, 1e-4, 0.5])
def test_z_loss_adds_coef_times_mean_log_z_squared(coef: float, one_thread) -> None:
    cfg = {"vocab_size": V, "block_size": 16, "n_layers": 1, "d_model": 32, "n_heads": 4, "n_kv_heads": 2}
    module = LMModule(cfg, z_loss=coef)
    with torch.no_grad():  # logits far from 0, so log Z is far from ln V and the z term is not negligible
        module.model.lm_head.weight.normal_(0, 1.0)
    x = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(1))
    y[0, :5] = -100  # masked labels count in neither term
    loss = module.training_step((x, y), 0)
    keep = y.view(-1) != -100
    logits = module.model(x).double().view(-1, V)[keep]
    log_z = torch.log(torch.exp(logits).sum(-1))  # by hand, in float64
    ce = (log_z - logits.gather(1, y.view(-1)[keep].view(-1, 1)).squeeze(1)).mean()
    z = (log_z**2).mean()
    assert z.item() > 1.0
    assert loss.item() == pytest.approx((ce + coef * z).item(), rel=1e-5)
    assert module.last_loss.item() == pytest.approx(ce.item(), rel=1e-5)  # the logged train loss: CE alone
    assert module.loss(x, y).item() == pytest.approx(F.cross_entropy(logits, y.view(-1)[keep]).item(), rel=1e-5)


def test_a_run_records_qk_norm_and_z_loss(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = gqa_sweep(*TINY, "model.n_kv_heads=2", "model.qk_norm=true", "optim.z_loss=1e-4", "sweep=mit",
                     f"results_dir={results}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "H8-G2-s0-qknorm-z0.0001" in proc.stdout + proc.stderr
    (row,) = load_runs(results).to_dict("records")
    assert (row["status"], row["qk_norm"], row["z_loss"]) == ("completed", 1, 1e-4)
    model, _ = load_model(results / "runs" / row["run_id"] / "model.pt")
    assert model.cfg.qk_norm and model.layers[0].attn.q_norm.weight.shape == (model.cfg.d_head,)
    assert load_history(results).max_attn_logit.notna().sum() >= 2


def test_negative_z_loss_is_a_one_line_config_error(tmp_path: Path) -> None:
    proc = gqa_sweep(*TINY, "optim.z_loss=-1e-4", f"results_dir={tmp_path / 'results'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "optim.z_loss=-0.0001 must be a finite number >= 0 (0 turns it off), e.g. optim.z_loss=1e-4"
    ]


# --- the report ---------------------------------------------------------------------------------------------


def _rows() -> list[tuple[dict, list[dict]]]:
    out = []
    for (G, qk), per_seed in LOSSES.items():
        for seed, losses in enumerate(per_seed):
            for lr, loss in zip(LRS, losses):
                logit = (100 if not qk else 5) * lr * 1000 / G + seed  # grows with lr unless qk_norm
                row = {
                    "run_id": f"G{G}-qk{qk}-s{seed}-lr{lr:g}", "sweep": "stability",
                    "status": "diverged" if loss is DIVERGED else "completed", "model_name": "tiny",
                    "n_heads": 4, "n_kv_heads": G, "group_size": 4 // G, "n_layers": 2, "d_model": 64, "d_head": 16,
                    "vocab_size": V, "n_params": 100_000 + 1000 * G, "seed": seed, "lr": lr, "qk_norm": qk,
                    "z_loss": 0.0, "val_loss": loss, "val_ppl": None if loss is None else math.exp(loss),
                    "max_attn_logit": logit, "loss_spikes": 0, "kv_bytes_per_token": 2 * G * 16 * 2 * 2,
                    "started_at": f"2026-01-01T00:00:{seed:02d}",
                }
                hist = [{"step": s, "loss": 3.0, "max_attn_logit": logit * s / 20 if s % 5 == 0 else None}
                        for s in range(1, 21)]
                out.append((row, hist))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stability")
    s = ResultsStore(d)
    for row, hist in _rows():
        s.write_run(row, hist)
    return d


def _sens(curve: list[float]) -> float:
    return sum(c - min(curve) for c in curve) / len(curve)


def test_lr_sensitivity_per_g_and_mitigation_hand_checked(store: Path) -> None:
    t = build_tables(load_runs(store))["stability"].set_index(["G", "mitigation"])
    assert list(t.index) == [(1, "none"), (1, "qk_norm"), (4, "none"), (4, "qk_norm")]
    # G=1, none: the diverged run and the 5.0 > ln V run both count as ln V.
    s0, s1 = [2.5, 2.0, L0], [2.7, 2.2, L0]
    mean_curve = [(a + b) / 2 for a, b in zip(s0, s1)]
    r = t.loc[(1, "none")]
    assert [r["loss_lr=0.001"], r["loss_lr=0.01"], r["loss_lr=0.1"]] == pytest.approx(mean_curve)
    assert r.lr_sensitivity == pytest.approx(_sens(mean_curve))
    assert r.lr_sensitivity_seed_mean == pytest.approx((_sens(s0) + _sens(s1)) / 2)
    assert r.lr_sensitivity_seed_std == pytest.approx(abs(_sens(s0) - _sens(s1)) / math.sqrt(2))
    assert (r.best_lr, r.loss_init, r.n_seeds, r.n_diverged, r.n_runs) == (0.01, pytest.approx(L0), 2, 1, 6)
    assert t.loc[(1, "qk_norm")].lr_sensitivity == pytest.approx(_sens([2.5, 2.1, 2.4]))
    assert t.loc[(4, "none")].lr_sensitivity == pytest.approx(0.5)
    assert t.loc[(4, "qk_norm")].lr_sensitivity == pytest.approx(_sens([2.4, 1.9, 2.2]))
    assert t.loc[(4, "qk_norm")].lr_sensitivity_seed_std == 0.0


def test_divergence_and_attn_logit_tables(store: Path) -> None:
    tables = build_tables(load_runs(store))
    div = tables["divergence"].set_index(["G", "mitigation"])
    assert (div.loc[(1, "none"), "diverged_lr=0.1"], div.loc[(1, "none"), "runs_lr=0.1"]) == (1, 2)
    assert div.n_diverged.tolist() == [1, 0, 0, 0]
    logits = tables["attn_logits"].set_index(["G", "mitigation"])
    assert logits.loc[(1, "none"), "logit_lr=0.1"] == pytest.approx(10_000 + 0.5)  # mean over seeds 0, 1
    assert logits.loc[(4, "qk_norm"), "logit_std_lr=0.001"] == pytest.approx(math.sqrt(0.5))


def test_g_ablation_compares_runs_without_mitigations(store: Path) -> None:
    tables = build_tables(load_runs(store))
    ab = tables["ablation"].set_index("G")
    # G=4 at its best lr (0.01): only the plain runs (loss 2.0), not the qk_norm ones (1.9).
    assert ab.loc[4, "val_ppl_mean"] == pytest.approx(math.exp(2.0))
    assert ab.loc[4, "n_runs"] == 2
    assert tables["lr_sensitivity"].set_index("G").loc[4, "lr_sensitivity"] == pytest.approx(0.5)


def test_no_stability_tables_without_several_mitigations(store: Path) -> None:
    plain = load_runs(store).query("qk_norm == 0")
    tables = build_tables(plain)
    assert "lr_sensitivity" in tables and not {"stability", "attn_logits", "divergence"} & set(tables)
    assert stability_plots(plain, load_history(store)) == {}


def test_mitigation_labels() -> None:
    df = pd.DataFrame({"qk_norm": [0, 1, 0, 1, None], "z_loss": [0.0, 0.0, 1e-4, 1e-4, None]})
    assert mitigation(df).tolist() == ["none", "qk_norm", "z_loss=0.0001", "qk_norm+z_loss=0.0001", "none"]


def test_stability_plots_show_the_tables(store: Path) -> None:
    runs, hist = load_runs(store), load_history(store)
    figs = make_plots(build_tables(runs)["ablation"], runs, hist)
    assert {"loss_vs_lr", "lr_sensitivity_vs_G", "attn_logit_growth"} <= set(figs)
    panels = figs["loss_vs_lr"].axes
    assert [ax.get_title() for ax in panels] == ["tiny, G=1 (MQA)", "tiny, G=4 (MHA)"]
    none_line = panels[0].get_lines()[0]  # G=1, none: the seed-mean capped curve
    assert none_line.get_ydata().tolist() == pytest.approx([2.6, 2.1, L0])
    growth = figs["attn_logit_growth"].axes
    assert len(growth) == 4 and len(growth[0].get_lines()) == len(LRS)  # rows: mitigation, columns: G
    sens = figs["lr_sensitivity_vs_G"].axes[0]
    curves = {c.get_label(): c.lines[0] for c in sens.containers}  # one errorbar line per mitigation
    assert sorted(curves) == ["tiny, none", "tiny, qk_norm"]
    assert curves["tiny, none"].get_xdata().tolist() == [1, 4]
    s0, s1 = _sens([2.5, 2.0, L0]), _sens([2.7, 2.2, L0])
    assert curves["tiny, none"].get_ydata().tolist() == pytest.approx([(s0 + s1) / 2, 0.5])


def test_gqa_report_writes_stability_files(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(store), "--plots", "--out", str(out)]) == 0
    assert "### Stability: LR sensitivity per G and mitigation" in stdout.getvalue()
    for name in ("stability.md", "stability.csv", "stability.tex", "attn_logits.md", "divergence.csv",
                 "loss_vs_lr.png", "loss_vs_lr.svg", "lr_sensitivity_vs_G.png", "attn_logit_growth.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "stability.md").read_text()
    assert "| tiny    | none         | 1   |" in md and f"{_sens([2.6, 2.1, L0]):.3f}" in md
