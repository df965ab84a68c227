"""Replicates are runs that differ only in seed: a char and a BPE sweep stored under one sweep name, with the same
run names, are reported as two groups and no table cell, plot line or fit pools them (issue 31, item 1)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from gqa_sweep import report
from gqa_sweep.report.groups import context_keys, split
from gqa_sweep.report.scaling import scaling_tables
from gqa_sweep.store.results import ResultsStore, load_runs

# The config a run stores (abridged to the keys that matter here: the grouping reads whatever is there).
CHAR = {
    "data": {"source": "shakespeare", "path": None, "tokenizer": "char", "vocab_size": 1024, "block_size": 128,
             "cache_dir": "/x/cache", "num_workers": 0},
    "model": {"name": "tiny", "n_layers": 2, "d_model": 128, "n_heads": 8, "n_kv_heads": 2, "d_head": None},
    "optim": {"lr": 3e-3, "warmup_steps": 20, "z_loss": 0.0},
    "trainer": {"max_steps": 300, "precision": "bf16-mixed", "num_threads": 2},
    "init": {"method": "scratch", "alpha": None},
    "seed": 0, "sweep": "g_sweep", "results_dir": "/x", "logger": {"kind": "csv"},
}  # fmt: skip
BPE = copy.deepcopy(CHAR)
BPE["data"] |= {"source": "text", "path": "/data/debian.txt", "tokenizer": "bpe"}
# (tokenizer, G) -> val ppl of seeds 0, 1; params differ too (the vocabulary).
PPL = {("char", 1): (6.8, 7.0), ("char", 8): (6.7, 6.9), ("bpe", 1): (34.0, 35.0), ("bpe", 8): (33.0, 33.5)}
PARAMS = {"char": 361_000, "bpe": 607_000}


def _row(cfg: dict, G: int, seed: int, ppl: float, **kw) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["model"]["n_kv_heads"], cfg["seed"] = G, seed
    tok = cfg["data"]["tokenizer"]
    return {
        "run_id": f"{tok}-g{G}-s{seed}", "run_name": f"H8-G{G}-s{seed}", "sweep": "g_sweep", "status": "completed",
        "model_name": "tiny", "n_heads": 8, "n_kv_heads": G, "group_size": 8 // G, "n_layers": 2, "d_model": 128,
        "d_head": 16, "n_params": PARAMS[tok], "seed": seed, "lr": 3e-3, "val_ppl": ppl, "val_loss": math.log(ppl),
        "vocab_size": 65 if tok == "char" else 1024, "kv_bytes_per_token": 2 * G * 16 * 2 * 2,
        "data_name": cfg["data"]["source"], "tokenizer": tok, "config": cfg,
        "val_loss_by_pos": json.dumps([math.log(ppl) + 0.1, math.log(ppl)]), "block_size": 128,
        "decode_tokens_per_s": 100.0 * G, "train_tokens_per_s": 1000.0, **kw,
    }  # fmt: skip


@pytest.fixture(scope="module")
def pooled(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pooled") / "results"
    store = ResultsStore(d)
    for (tok, G), ppls in PPL.items():
        for seed, ppl in enumerate(ppls):
            store.write_run(_row(CHAR if tok == "char" else BPE, G, seed, ppl))
    return d


def test_the_context_is_what_differs_beyond_seed_and_the_axes(pooled):
    runs = load_runs(pooled)
    # seed, G, results_dir, logging, the sweep label and the thread count differ or are labels: no split there.
    assert context_keys(runs) == ["data.path", "data.source", "data.tokenizer"]
    groups = split(runs)
    assert [g.keys["data.tokenizer"] for g in groups] == ["char", "bpe"]
    assert [len(g.runs) for g in groups] == [4, 4]
    assert all(g.runs.seed.nunique() == 2 for g in groups)


def test_cli_reports_each_group_apart_and_says_so(pooled, tmp_path):
    out, buf = tmp_path / "report", io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert report.main([str(pooled), "--sweep", "g_sweep", "--out", str(out), "--plots"]) == 0
    text = buf.getvalue()
    first = text.splitlines()[0]
    assert first.startswith("gqa-report: these runs are 2 different computations (they differ in data.source, "
                            "data.path, data.tokenizer), never averaged together")
    for tok, slug in (("char", "source=shakespeare_path=null_tokenizer=char"),
                      ("bpe", "source=text_path=debian.txt_tokenizer=bpe")):
        t = pd.read_csv(out / slug / "ablation.csv").set_index("G")
        for G in (1, 8):
            assert t.loc[G, "val_ppl_mean"] == pytest.approx(sum(PPL[tok, G]) / 2)
            assert t.loc[G, "val_ppl_std"] == pytest.approx(abs(PPL[tok, G][0] - PPL[tok, G][1]) / math.sqrt(2))
            assert t.loc[G, "n_completed"] == 2  # n counts the seeds of one computation
            assert t.loc[G, "n_params"] == PARAMS[tok]
        assert (out / slug / "ppl_vs_G.png").stat().st_size > 0
        assert (out / slug / "loss_vs_position.png").stat().st_size > 0
        assert f"## Group {1 if tok == 'char' else 2}/2: data.source=" in text


def test_pooled_rows_through_the_api_never_share_a_cell(pooled):
    runs = load_runs(pooled)
    t = report.build_tables(runs)["ablation"]
    assert len(t) == 4  # 2 contexts x 2 G, each its own row
    assert set(t.model) == {"tiny [source=shakespeare, path=null, tokenizer=char]",
                            "tiny [source=text, path=debian.txt, tokenizer=bpe]"}
    char = t[t.model.str.contains("char")].set_index("G")
    assert char.loc[1, "val_ppl_mean"] == pytest.approx(6.9)
    assert char.loc[1, "delta_ppl_vs_mha_pct"] == pytest.approx(100 * (6.9 / 6.8 - 1))  # its own MHA
    figs = report.make_plots(t, runs)
    assert len(figs["ppl_vs_G"].axes[0].get_legend().get_texts()) == 2
    from gqa_sweep.report.recall import position_losses

    pos = position_losses(runs)
    assert pos.groupby(["model", "G"]).size().eq(2).all() and pos.model.nunique() == 2


def test_a_ladder_varies_steps_with_size_without_splitting():
    rows = []
    for size, (L, steps) in {"ladder-s1": (1, 189), "ladder-s2": (2, 400)}.items():
        cfg = copy.deepcopy(BPE)
        cfg["model"] |= {"name": size, "n_layers": L}
        cfg["trainer"]["max_steps"] = steps
        rows += [_row(cfg, G, 0, 30.0) | {"model_name": size, "run_id": f"{size}-{G}"} for G in (1, 8)]
    runs = pd.DataFrame(rows)
    assert len(split(runs)) == 1
    runs.loc[runs.run_id == "ladder-s1-1", "config"] = [rows[0]["config"] | {"data": CHAR["data"]}]
    with pytest.raises(ValueError, match="2 different computations .* fit one at a time"):
        scaling_tables(runs, draws=2)


def test_rows_without_a_config_group_by_their_data_columns():
    rows = [_row(CHAR, 1, 0, 7.0), _row(BPE, 1, 0, 34.0)]
    runs = pd.DataFrame(rows).drop(columns="config")
    # vocab_size differs too, but the data and tokenizer fix it: the groups are named by those.
    assert [g.label for g in split(runs)] == ["data_name=shakespeare, tokenizer=char", "data_name=text, tokenizer=bpe"]


def test_another_head_size_at_the_same_g_is_another_row(tmp_path):
    wide = _row(CHAR, 1, 0, 8.0, d_head=32, run_id="wide", kv_bytes_per_token=2 * 32 * 2 * 2)
    wide["config"]["model"]["d_head"] = 32  # experiment=kv_budget's fewer_wider: G = 1 with twice the head size
    store = ResultsStore(tmp_path)
    for row in (_row(CHAR, 1, 0, 7.0), _row(CHAR, 8, 0, 6.0), wide):
        store.write_run(row)
    runs = load_runs(tmp_path)
    t = report.build_tables(runs)["ablation"].query("G == 1").set_index("model")
    assert t.loc["tiny", "val_ppl_mean"] == 7.0 and t.loc["tiny (d_head=32)", "val_ppl_mean"] == 8.0
    assert t.loc["tiny (d_head=32)", "delta_ppl_vs_mha_pct"] == pytest.approx(100 * (8 / 6 - 1))


def test_a_wandb_config_names_its_run_without_splitting():
    rows = [_row(CHAR, G, seed, 7.0) for G in (1, 8) for seed in (0, 1)]
    runs = pd.DataFrame([r | {"config": r["config"] | {"run_id": r["run_id"]}} for r in rows])
    assert len(split(runs)) == 1 and context_keys(runs) == []
