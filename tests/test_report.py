"""gqa-report: exact table figures from a hand-built store, LR sensitivity, conversion, plots, notebook, errors."""

from __future__ import annotations

import contextlib
import io
import math
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from gqa_sweep import report
from gqa_sweep.report import main
from gqa_sweep.store.results import ResultsStore, load_history

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "ablation.ipynb"
VOCAB = 256
TINY = dict(model_name="tiny", n_heads=8, d_model=64, d_head=8, n_layers=2, vocab_size=VOCAB)
SMALL = dict(model_name="small", n_heads=8, d_model=128, d_head=16, n_layers=2, vocab_size=VOCAB)

# (G, seed) -> (status, val_ppl, train tok/s, decode tok/s, grad-norm max, loss spikes) for tiny, g_sweep.
# Diverged/failed rows carry absurd numbers: they must never reach a mean, median or max.
TINY_RUNS = {
    (8, 0): ("completed", 10.0, 1000.0, 500.0, 1.5, 0),
    (8, 1): ("completed", 11.0, 1100.0, 520.0, 2.5, 1),
    (8, 2): ("completed", 12.0, 1300.0, 510.0, 2.0, 2),
    (4, 0): ("completed", 11.0, 1200.0, 600.0, 1.0, 0),
    (4, 1): ("completed", 12.0, 1200.0, 600.0, 1.0, 0),
    (4, 2): ("completed", 13.0, 1200.0, 600.0, 1.0, 0),
    (2, 0): ("completed", 12.0, 1250.0, 700.0, 1.0, 1),
    (2, 1): ("completed", 14.0, 1250.0, 700.0, 3.0, 2),
    (2, 2): ("diverged", 1e6, 9e9, 9e9, 1e9, 50),
    (1, 0): ("completed", 14.0, 1300.0, 900.0, 1.0, 0),
    (1, 1): ("failed", None, None, None, None, None),
    (1, 2): ("completed", 18.0, 1300.0, 1000.0, 1.0, 0),
}


def _row(sweep: str, model: dict, G: int, seed: int, status: str, ppl: float | None, **kw) -> dict:
    L, dh = model["n_layers"], model["d_head"]
    return {
        "run_id": f"{sweep}-{model['model_name']}-g{G}-s{seed}-{kw.get('lr', 3e-3):g}-{kw.get('init', 'scratch')}-"
        f"{kw.get('alpha')}",
        "sweep": sweep, "status": status, **model, "n_kv_heads": G, "group_size": model["n_heads"] // G,
        "n_params": (100_000 if model is TINY else 400_000) + 1000 * G, "seed": seed, "lr": 3e-3,
        "val_ppl": ppl, "val_loss": None if ppl is None else math.log(ppl),
        "kv_bytes_per_token": 2 * G * dh * L * 2, "started_at": f"2025-01-01T00:00:{seed:02d}",
        **kw,
    }


def _history(G: int, seed: int, status: str) -> list[dict]:
    losses = [5.5 - 0.1 * s * G / 8 for s in range(20)]
    if status == "diverged":
        losses[-1] = math.inf
    return [{"step": s, "loss": x, "grad_norm": 1.0, "lr": 3e-3, "tokens_per_s": 1e3} for s, x in enumerate(losses)]


def _g_sweep(store: ResultsStore) -> None:
    for (G, seed), (status, ppl, tps, dps, gn, spikes) in TINY_RUNS.items():
        row = _row("g_sweep", TINY, G, seed, status, ppl, train_tokens_per_s=tps, decode_tokens_per_s=dps,
                   grad_norm_max=gn, loss_spikes=spikes)
        store.write_run(row, _history(G, seed, status) if status != "failed" else ())
    for G, status, ppl in ((8, "completed", 9.0), (4, "completed", 9.9), (1, "diverged", None)):
        store.write_run(_row("g_sweep", SMALL, G, 0, status, ppl, train_tokens_per_s=500.0,
                             decode_tokens_per_s=300.0, grad_norm_max=1.0, loss_spikes=0))


# lr_grid: (G, lr) -> per-seed final val loss, None = diverged / failed (counts as ln 256).
LR_GRID = {
    (8, 1e-3): [(3.0, "completed"), (3.2, "completed")],
    (8, 3e-3): [(2.8, "completed"), (3.0, "completed")],
    (8, 1e-2): [(2.6, "completed"), (None, "diverged")],
    (1, 1e-3): [(3.5, "completed"), (3.7, "completed")],
    (1, 3e-3): [(3.4, "completed"), (None, "failed")],
    (1, 1e-2): [(6.5, "completed"), (None, "diverged")],  # mean above ln V: capped at ln V
}


def _lr_grid(store: ResultsStore) -> None:
    for (G, lr), seeds in LR_GRID.items():
        for seed, (loss, status) in enumerate(seeds):
            store.write_run(_row("lr_grid", TINY, G, seed, status, None if loss is None else math.exp(loss), lr=lr))


def _convert(store: ResultsStore) -> None:
    parent = "g_sweep-tiny-g8-s0-0.003-scratch-None"  # ppl 10.0
    runs = [  # (init, alpha, seed, status, ppl); "random" is the sweep config's spelling of mha_random
        ("mha_mean", 0.0, 0, "completed", 20.0), ("mha_mean", 0.1, 0, "completed", 12.5),
        ("mha_first", 0.0, 0, "completed", 40.0), ("mha_first", 0.1, 0, "completed", 13.0),
        ("mha_random", 0.0, 0, "completed", 300.0), ("random", 0.1, 0, "completed", 15.0),
        ("mha_random", 0.1, 1, "failed", None), ("scratch", 0.1, 0, "completed", 16.0),
    ]
    for init, alpha, seed, status, ppl in runs:
        store.write_run(_row("convert", TINY, 2, seed, status, ppl, init=init, alpha=alpha,
                             parent_run_id=None if init == "scratch" else parent))


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("store") / "results"
    store = ResultsStore(d)
    _g_sweep(store)
    _lr_grid(store)
    _convert(store)
    return d


def md_table(text: str, title: str) -> list[dict[str, str]]:
    """The rows of the Markdown pipe table under `### title`, as header -> cell dicts."""
    lines = text.split(f"### {title}\n\n", 1)[1].splitlines()
    lines = lines[: lines.index("")] if "" in lines else lines
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return [dict(zip(cells[0], r)) for r in cells[2:]]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def g_report(store_dir, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("report")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(store_dir), "--sweep", "g_sweep", "--out", str(out), "--plots"]) == 0
    return buf.getvalue(), out


ABLATION = report.TITLES["ablation"]


def test_ablation_markdown_exact_figures(g_report):
    text, out = g_report
    rows = md_table(text, ABLATION)
    assert [(r["model"], r["G"]) for r in rows] == [  # tiny before small: ordered by size, not by name
        ("tiny", "1"), ("tiny", "2"), ("tiny", "4"), ("tiny", "8"), ("small", "1"), ("small", "4"), ("small", "8")
    ]
    by = {(r["model"], int(r["G"])): r for r in rows}
    # tiny G=8 (MHA): ppl 10, 11, 12 -> mean 11, sample std 1; medians/max/mean over the 3 seeds.
    assert by["tiny", 8] == {
        "model": "tiny", "G": "8", "H/G": "1", "params": "108.00K", "KV B/token": "512", "KV % of MHA": "100.0%",
        "val ppl": "11.00 ± 1.00", "n": "3", "Δ ppl vs MHA": "+0.00%", "train tok/s": "1,100", "decode tok/s": "510",
        "grad-norm max": "2.50", "loss spikes": "1.00", "diverged": "0/3", "failed": "0/3"}
    # G=4: 11, 12, 13 -> 12 ± 1; 12/11 - 1 = +9.09 %.
    assert (by["tiny", 4]["val ppl"], by["tiny", 4]["Δ ppl vs MHA"], by["tiny", 4]["KV % of MHA"]) == (
        "12.00 ± 1.00", "+9.09%", "50.0%")
    # G=2: the diverged seed (ppl 1e6, grad norm 1e9, 50 spikes) is counted, never averaged: 12, 14 -> 13 ± √2.
    g2 = by["tiny", 2]
    assert (g2["val ppl"], g2["n"], g2["Δ ppl vs MHA"], g2["diverged"], g2["failed"]) == (
        "13.00 ± 1.41", "2", "+18.18%", "1/3", "0/3")
    assert (g2["grad-norm max"], g2["loss spikes"], g2["train tok/s"], g2["KV B/token"]) == (
        "3.00", "1.50", "1,250", "128")
    # G=1: the failed seed is counted: 14, 18 -> 16 ± √8; 16/11 - 1 = +45.45 %; decode median of 900, 1000.
    g1 = by["tiny", 1]
    assert (g1["val ppl"], g1["n"], g1["Δ ppl vs MHA"], g1["failed"], g1["decode tok/s"], g1["KV % of MHA"]) == (
        "16.00 ± 2.83", "2", "+45.45%", "1/3", "950", "12.5%")
    # small: one seed -> "± —"; the only G=1 run diverged -> "—" with its count.
    assert (by["small", 8]["val ppl"], by["small", 8]["KV B/token"]) == ("9.00 ± —", "1,024")
    assert (by["small", 4]["val ppl"], by["small", 4]["Δ ppl vs MHA"]) == ("9.90 ± —", "+10.00%")
    assert {k: by["small", 1][k] for k in ("val ppl", "n", "Δ ppl vs MHA", "diverged", "failed")} == {
        "val ppl": "—", "n": "0", "Δ ppl vs MHA": "—", "diverged": "1/1", "failed": "0/1"}
    assert "best lr" not in rows[0]  # one lr per cell: no lr selection happened
    assert md_table((out / "ablation.md").read_text(), ABLATION) == rows


def test_ablation_csv_raw_numbers(g_report):
    _, out = g_report
    t = pd.read_csv(out / "ablation.csv")
    tiny = t[t.model == "tiny"].set_index("G")
    assert tiny.val_ppl_mean.to_dict() == pytest.approx({1: 16.0, 2: 13.0, 4: 12.0, 8: 11.0})
    assert tiny.val_ppl_std.to_dict() == pytest.approx({1: math.sqrt(8), 2: math.sqrt(2), 4: 1.0, 8: 1.0})
    assert tiny.n_completed.to_dict() == {1: 2, 2: 2, 4: 3, 8: 3}
    assert tiny.n_runs.to_dict() == {1: 3, 2: 3, 4: 3, 8: 3}
    assert tiny.n_diverged.to_dict() == {1: 0, 2: 1, 4: 0, 8: 0}
    assert tiny.n_failed.to_dict() == {1: 1, 2: 0, 4: 0, 8: 0}
    assert tiny.delta_ppl_vs_mha_pct.to_dict() == pytest.approx({1: 500 / 11, 2: 200 / 11, 4: 100 / 11, 8: 0.0})
    assert tiny.kv_pct_of_mha.to_dict() == {1: 12.5, 2: 25.0, 4: 50.0, 8: 100.0}
    assert tiny.kv_bytes_per_token.to_dict() == {1: 64, 2: 128, 4: 256, 8: 512}
    small = t[t.model == "small"].set_index("G")
    assert math.isnan(small.val_ppl_std[8]) and math.isnan(small.val_ppl_mean[1])  # n=1: no std; n=0: no mean
    assert math.isnan(small.delta_ppl_vs_mha_pct[1])


def test_ablation_latex_booktabs(g_report):
    _, out = g_report
    tex = (out / "ablation.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0]
    rows = [ln for ln in body.splitlines() if ln.rstrip().endswith(r"\\")]
    assert len(rows) == 7
    assert r"11.00 $\pm$ 1.00" in rows[3] and r"+9.09\%" in rows[2] and r"9.00 $\pm$ --" in rows[6]
    assert r"$\Delta$ ppl vs MHA" in tex and "—" not in tex and "±" not in tex


def test_lr_sensitivity_hand_checked(store_dir, capsys):
    out = store_dir.parent / "lr_report"
    rc, text, _ = run_cli([str(store_dir), "--sweep", "lr_grid", "--out", str(out), "--format", "csv"], capsys)
    assert rc == 0
    l0 = math.log(VOCAB)
    # G=8: loss(lr) = 3.1, 2.9, (2.6 + ln V)/2; min 2.9 at lr 3e-3.
    g8 = [3.1, 2.9, (2.6 + l0) / 2]
    # G=1: 3.6, (3.4 + ln V)/2, (6.5 + ln V)/2 -> capped at ln V; min 3.6 at lr 1e-3.
    g1 = [3.6, (3.4 + l0) / 2, l0]
    sens = {8: sum(x - 2.9 for x in g8) / 3, 1: sum(x - 3.6 for x in g1) / 3}
    assert sens == pytest.approx({8: 0.4575296, 1: 0.9392549}, abs=1e-6)
    t = pd.read_csv(out / "lr_sensitivity.csv").set_index("G")
    assert t.lr_sensitivity.to_dict() == pytest.approx(sens)
    assert t.best_lr.to_dict() == pytest.approx({1: 1e-3, 8: 3e-3})
    assert t.loc[1, ["loss_lr=0.001", "loss_lr=0.003", "loss_lr=0.01"]].tolist() == pytest.approx(g1)
    assert t.loc[8, ["loss_lr=0.001", "loss_lr=0.003", "loss_lr=0.01"]].tolist() == pytest.approx(g8)
    rows = {r["G"]: r for r in md_table(text, report.TITLES["lr_sensitivity"])}
    assert (rows["8"]["LR sensitivity"], rows["8"]["best lr"], rows["8"]["loss @ lr=0.01"]) == (
        "0.458", "0.003", "4.073")
    assert (rows["1"]["LR sensitivity"], rows["1"]["loss @ lr=0.01"], rows["1"]["diverged"], rows["1"]["failed"]) == (
        "0.939", "5.545", "1/6", "1/6")
    # The ablation table shows each G at its best lr: G=8 -> the lr=3e-3 runs, ppl e^2.8 and e^3.0.
    ab = {r["G"]: r for r in md_table(text, ABLATION)}
    ppl = [math.exp(2.8), math.exp(3.0)]
    mean, std = sum(ppl) / 2, abs(ppl[1] - ppl[0]) / math.sqrt(2)
    assert (ab["8"]["val ppl"], ab["8"]["best lr"], ab["1"]["best lr"]) == (
        f"{mean:.2f} ± {std:.2f}", "0.003", "0.001 ⚠ edge of the grid: widen it")  # 1e-3 is the lowest tried
    assert t.best_lr_at_edge.to_dict() == {1: True, 8: False}
    assert rows["1"]["best lr"].endswith("widen it") and rows["8"]["best lr"] == "0.003"
    g1_mean = (math.exp(3.5) + math.exp(3.7)) / 2  # mean of ppl, not exp of the mean loss
    assert ab["1"]["Δ ppl vs MHA"] == f"{(g1_mean / mean - 1) * 100:+.2f}%"


def test_conversion_table(store_dir, capsys):
    out = store_dir.parent / "conv_report"
    rc, text, _ = run_cli([str(store_dir), "--sweep", "convert", "--out", str(out)], capsys)
    assert rc == 0
    assert f"### {ABLATION}" not in text  # every row of this sweep is a conversion row
    rows = md_table(text, report.TITLES["conversion"])
    assert [r["method"] for r in rows] == ["mha_mean", "mha_first", "mha_random", "scratch"]
    got = {r["method"]: (r["α=0"], r["α=0.1"], r["MHA parent ppl"]) for r in rows}
    assert got == {
        "mha_mean": ("20.00 ± — (1/1)", "12.50 ± — (1/1)", "10.00"),
        "mha_first": ("40.00 ± — (1/1)", "13.00 ± — (1/1)", "10.00"),
        "mha_random": ("300.00 ± — (1/1)", "15.00 ± — (1/2)", "10.00"),  # "random" counted as mha_random
        "scratch": ("—", "16.00 ± — (1/1)", "10.00"),  # the parent is the reference for the whole (model, G)
    }
    t = pd.read_csv(out / "conversion.csv")
    assert len(t) == 7 and t.G.eq(2).all()
    hit = t[(t.method == "mha_random") & (t.alpha == 0.1)].iloc[0]
    assert (hit.val_ppl_mean, hit.n_completed, hit.n_failed, hit.parent_val_ppl) == (15.0, 1, 1, 10.0)
    assert (out / "conversion.tex").read_text().count(r"\\" + "\n") == 5  # header + 4 methods


def test_plots_written(g_report):
    _, out = g_report
    for name in ("ppl_vs_G", "kv_bytes_vs_G", "decode_tokens_per_s_vs_G", "ppl_vs_kv_bytes", "loss_curves"):
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1024
        assert ET.parse(svg).getroot().tag.endswith("svg")


def test_loss_curves_one_line_per_run(store_dir):
    runs = report.load_results(store_dir)
    runs = runs[runs.sweep == "g_sweep"]
    fig = report.plot_loss_curves(runs, load_history(store_dir, runs.run_id))
    (tiny,) = fig.axes  # no small run has history: no empty panel
    assert len(tiny.lines) == 11  # 12 runs minus the failed one, which has no history
    assert sum(ln.get_linestyle() == "--" for ln in tiny.lines) == 1  # the diverged run
    assert [t.get_text() for t in tiny.get_legend().get_texts()] == ["G=1", "G=2", "G=4", "G=8"]


def test_plots_show_the_table(store_dir):
    table = report.ablation_table(report.select_sweep(report.load_results(store_dir), "g_sweep", "results/"))
    tiny, small = (c.lines[0] for c in report.plot_ppl_vs_g(table).axes[0].containers)  # errorbar data lines
    assert tiny.get_xdata().tolist() == [1, 2, 4, 8] and tiny.get_ydata().tolist() == [16.0, 13.0, 12.0, 11.0]
    assert small.get_xdata().tolist() == [4, 8]  # the small G=1 cell has no completed run: no point
    pareto = report.plot_ppl_vs_kv_bytes(table).axes[0]
    assert [t.get_text() for t in pareto.texts] == ["G=1", "G=2", "G=4", "G=8", "G=4", "G=8"]
    assert pareto.containers[0].lines[0].get_xdata().tolist() == [64, 128, 256, 512]


def test_notebook_executes(store_dir, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is None and c.outputs == [] for c in code)  # committed clean
    monkeypatch.setenv("GQA_RESULTS_DIR", str(store_dir))
    monkeypatch.delenv("GQA_SWEEP", raising=False)
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
                   ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    cells = {(r["model"], r["G"]): r["val ppl"] for r in md_table(shown, ABLATION)}
    assert cells["small", "8"] == "9.00 ± —" and report.TITLES["conversion"] in shown
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5


def test_missing_dir(tmp_path, capsys):
    d = tmp_path / "nope"
    assert run_cli([str(d)], capsys)[::2] == (2, (
        f"gqa-report: error: results dir '{d}' does not exist; pass the results_dir a sweep wrote to "
        "(gqa-sweep -m results_dir=DIR), or --wandb ENTITY/PROJECT\n"))


def test_empty_dir_and_empty_store(tmp_path, capsys):
    assert run_cli([str(tmp_path)], capsys)[::2] == (2, (
        f"gqa-report: error: '{tmp_path}/' has no runs.sqlite; run a sweep first: "
        f"gqa-sweep -m results_dir={tmp_path}\n"))
    ResultsStore(tmp_path)._init()  # an empty store: the tables, no rows
    assert run_cli([str(tmp_path)], capsys)[::2] == (2, (
        f"gqa-report: error: '{tmp_path}/' has no runs; run a sweep first: gqa-sweep -m results_dir={tmp_path}\n"))


def test_unknown_sweep(store_dir, capsys):
    rc, out, err = run_cli([str(store_dir), "--sweep", "foo"], capsys)
    assert (rc, out, err) == (
        2, "", f"gqa-report: error: no sweep 'foo' in {store_dir}/; sweeps: convert, g_sweep, lr_grid\n")


def test_no_source_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2 and "give RESULTS_DIR (e.g. results/) or --wandb ENTITY/PROJECT" in capsys.readouterr().err


class _FakeRun:
    def __init__(self, row: dict, state: str = "finished") -> None:
        self.summary, self.config, self.state = row, {"model": {"n_kv_heads": row["n_kv_heads"]}}, state
        self.id, self.group = row["run_id"], row["sweep"]


def _fake_wandb(monkeypatch, runs=None, error: Exception | None = None, logged_in: bool = True) -> list:
    calls = []

    class Api:
        def __init__(self, timeout=None):
            calls.append(timeout)

        def runs(self, path):
            if error:
                raise error
            return runs

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api, login=lambda **kw: logged_in))
    return calls


def test_wandb_rows_make_the_same_table(store_dir, monkeypatch, capsys):
    local = report.load_results(store_dir)
    local = local[local.sweep == "g_sweep"]
    rows = [{k: v for k, v in r.items() if pd.notna(v)} for r in local.to_dict("records")]
    running = dict(rows[0], run_id="still-running")
    del running["status"]
    calls = _fake_wandb(monkeypatch, [_FakeRun(r) for r in rows] + [_FakeRun(running, state="running")])
    rc, text, _ = run_cli(["--wandb", "me/gqa", "--out", str(store_dir.parent / "wb"), "--format", "csv"], capsys)
    assert rc == 0 and calls == [5]  # a short HTTP timeout: fail fast
    assert md_table(text, ABLATION) == md_table(report.to_markdown("ablation", report.ablation_table(local)), ABLATION)
    assert len(md_table(text, ABLATION)) == 7


def test_wandb_unreachable(monkeypatch, capsys):
    _fake_wandb(monkeypatch, error=ConnectionError("Max retries exceeded with url: /graphql\nmore"))
    assert run_cli(["--wandb", "me/gqa"], capsys)[::2] == (2, (
        "gqa-report: error: wandb could not be reached for 'me/gqa' (ConnectionError: Max retries exceeded with "
        "url: /graphql); use the local results dir instead: gqa-report RESULTS_DIR\n"))
    _fake_wandb(monkeypatch, logged_in=False)
    assert run_cli(["--wandb", "me/gqa"], capsys)[::2] == (2, (
        "gqa-report: error: wandb could not be reached for 'me/gqa' (no API key: set WANDB_API_KEY); "
        "use the local results dir instead: gqa-report RESULTS_DIR\n"))
    assert run_cli(["--wandb", "gqa"], capsys)[::2] == (2, (
        "gqa-report: error: --wandb 'gqa': expected ENTITY/PROJECT, e.g. --wandb my-team/gqa-sweep\n"))
