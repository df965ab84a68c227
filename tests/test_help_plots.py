"""Help and plots that are true: the help lists every experiment and what gqa-export accepts; plots draw error bars
only where n > 1 and say so, start throughput at 0 and name precision, device and decode shape; the notebook and
the HF decode comparison raise no deprecation warning."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from gqa_sweep.report import annotate
from gqa_sweep.report.plots import plot_decode_vs_g, plot_kv_bytes_vs_g, plot_ppl_vs_g, plot_ppl_vs_kv_bytes
from gqa_sweep.report.stability import plot_lr_sensitivity_vs_g
from tests.conftest import ROOT, gqa_sweep

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


# --- help -----------------------------------------------------------------------------------------------------
def _experiments_section(text: str) -> str:
    return text.split("Named experiments", 1)[1].split("\n\n", 1)[0]


def test_help_template_lists_every_experiment_with_a_description():
    template = OmegaConf.load(ROOT / "conf" / "config.yaml").hydra.help.template
    section = _experiments_section(template)
    listed = dict(re.findall(r"^\s+(\w+)\s{2,}(\S.*)$", section, flags=re.MULTILINE))
    names = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    assert names <= set(listed), f"add to the help template in conf/config.yaml: {sorted(names - set(listed))}"
    assert {"ladder", "kv_variants"} <= set(listed)  # being added beside this change: listed already
    assert "gqa-report --scaling" in listed["ladder"] and "equal KV bytes" in listed["kv_variants"]
    assert all(len(desc) > 10 for desc in listed.values())


def test_help_group_choices_exist_and_tokenizers_are_the_accepted_ones():
    from gqa_sweep.data.tokenizers import BUILTIN as TOKENIZERS

    template = OmegaConf.load(ROOT / "conf" / "config.yaml").hydra.help.template
    overrides = template.split("Main overrides", 1)[1].split("\n\n", 1)[0]
    named = [(g, c) for g, cs in re.findall(r"(?<![.\w])(model|trainer|logger|data)=([\w|-]+)", overrides)
             for c in cs.split("|")]  # fmt: skip
    assert {g for g, _ in named} == {"model", "trainer", "logger", "data"} and ("data", "hf") in named
    for group, choice in named:
        assert (ROOT / "conf" / group / f"{choice}.yaml").is_file(), f"{group}={choice}"
    assert re.search(r"data\.tokenizer=([\w|]+)", overrides).group(1).split("|") == list(TOKENIZERS)


def test_rendered_help_lists_every_experiment_and_the_run_dir_export(tmp_path):
    proc = gqa_sweep("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = _experiments_section(proc.stdout)
    for p in (ROOT / "conf" / "experiment").glob("*.yaml"):
        assert re.search(rf"^\s+{p.stem}\s", section, flags=re.MULTILINE), p.stem
    assert "gqa-export RUN_DIR OUT      a run (its directory or its model.pt)" in proc.stdout


def test_gqa_export_accepts_a_run_directory(tmp_path, capsys):
    pytest.importorskip("transformers")
    from gqa_sweep.hf.export import export_main
    from gqa_sweep.model.shape import ModelConfig
    from gqa_sweep.model.transformer import DecoderLM
    from gqa_sweep.train.checkpoint import save_model

    run_dir = tmp_path / "runs" / "abc123"
    model = DecoderLM(ModelConfig(vocab_size=40, block_size=16, n_layers=1, d_model=32, n_heads=4, n_kv_heads=2))
    save_model(model, run_dir / "model.pt")
    assert export_main([str(run_dir), str(tmp_path / "hf")]) == 0
    assert "H=4 G=2" in capsys.readouterr().out and (tmp_path / "hf" / "config.json").is_file()
    # A directory without model.pt: one line naming what to pass.
    (tmp_path / "empty").mkdir()
    assert export_main([str(tmp_path / "empty"), str(tmp_path / "hf2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory without model.pt; pass the run directory" in err
    assert not (tmp_path / "hf2").exists()


# --- plots ----------------------------------------------------------------------------------------------------
def _table(n: list[int]) -> pd.DataFrame:
    std = [np.nan if k == 1 else 0.5 for k in n]
    return pd.DataFrame({
        "model": "tiny", "n_heads": 8, "G": [1, 2, 4, 8], "kv_bytes_per_token": [64, 128, 256, 512],
        "val_ppl_mean": [12.0, 11.0, 10.5, 10.0], "val_ppl_std": std, "n_completed": n,
        "decode_tokens_per_s_median": [2600.0, 2500.0, 2400.0, 2300.0],
    })  # fmt: skip


RUNS = pd.DataFrame({"status": ["completed", "completed", "failed"], "precision": ["bf16-mixed", "bf16-mixed", "32"],
                     "device": "CPU: AMD EPYC", "decode_batch": [8, 8, 4], "decode_context": [80, 80, 10]})  # fmt: skip


def _bars(container) -> list[int]:
    """Per point: 1 where the errorbar container drew a bar, 0 where not."""
    if not container.has_yerr:
        return [0] * len(container.lines[0].get_xdata())
    (segments,) = [c.get_segments() for c in container.lines[2]]
    return [int(len(s) > 0) for s in segments]


def _texts(ax) -> list[str]:
    return annotate.notes(ax)


@pytest.mark.parametrize("plot", [plot_ppl_vs_g, plot_ppl_vs_kv_bytes])
def test_mean_std_plots_draw_bars_only_where_n_exceeds_one(plot):
    ax = plot(_table([1, 3, 3, 2]), RUNS).axes[0]
    (container,) = ax.containers
    assert _bars(container) == [0, 1, 1, 1]
    assert "error bars: ± sample std over n = 1-3 seeds; n = 1, no error bar" in _texts(ax)
    assert "mean ± std" in ax.get_ylabel()


@pytest.mark.parametrize("plot", [plot_ppl_vs_g, plot_ppl_vs_kv_bytes])
def test_all_single_runs_have_no_error_bar_and_say_so(plot):
    ax = plot(_table([1, 1, 1, 1]), RUNS).axes[0]
    (container,) = ax.containers
    assert not container.has_yerr and _bars(container) == [0, 0, 0, 0]
    assert annotate.NO_BAR in _texts(ax)


def test_seeds_everywhere_say_n_without_the_no_bar_note():
    ax = plot_ppl_vs_g(_table([3, 3, 3, 3]), RUNS).axes[0]
    assert _bars(ax.containers[0]) == [1, 1, 1, 1]
    assert "error bars: ± sample std over n = 3 seeds" in _texts(ax)


def test_decode_plot_starts_at_zero_and_names_precision_device_and_shape():
    fig = plot_decode_vs_g(_table([1, 1, 1, 1]), RUNS)
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0  # the data sit at 2,300-2,600: an axis from there would show a 13 % gap as 10x
    assert ax.get_ylabel() == "decode tokens / s (median over runs)"
    # The caption reads the completed rows only (the failed one ran elsewhere, in fp32).
    assert fig.get_suptitle() == "precision bf16-mixed | device CPU: AMD EPYC | decode batch 8, context 80"


@pytest.mark.parametrize("plot", [plot_ppl_vs_g, plot_kv_bytes_vs_g, plot_decode_vs_g, plot_ppl_vs_kv_bytes])
def test_every_ablation_plot_names_precision_and_device(plot):
    assert plot(_table([1, 3, 3, 2]), RUNS).get_suptitle().startswith("precision bf16-mixed | device CPU: AMD EPYC")


def test_make_plots_hands_the_runs_to_the_plots(monkeypatch):
    from gqa_sweep.report import plots

    monkeypatch.setattr(plots, "recall_plots", lambda runs: {})
    monkeypatch.setattr(plots, "stability_plots", lambda runs, history: {})
    figs = plots.make_plots(_table([1, 3, 3, 2]), RUNS)
    assert figs["decode_tokens_per_s_vs_G"].get_suptitle().endswith("decode batch 8, context 80")
    assert {f.get_suptitle() for k, f in figs.items() if k != "decode_tokens_per_s_vs_G"} == {
        "precision bf16-mixed | device CPU: AMD EPYC"}


def test_the_setting_lists_mixed_values_and_marks_unknown():
    mixed = pd.DataFrame({"precision": ["bf16-mixed", "32-true"], "device": ["a", "a"]})
    assert annotate.setting(mixed) == "precision bf16-mixed / 32-true | device a"
    assert annotate.setting(None, decode=True) == "precision ? | device ? | decode batch ?, context ?"


def test_stability_sensitivity_plot_has_no_bar_for_a_single_seed():
    table = pd.DataFrame({"model": "tiny", "mitigation": "none", "G": [1, 2], "lr_sensitivity_seed_mean": [0.1, 0.2],
                          "lr_sensitivity_seed_std": [np.nan, 0.05], "n_seeds": [1, 3]})  # fmt: skip
    ax = plot_lr_sensitivity_vs_g(table).axes[0]
    assert _bars(ax.containers[0]) == [0, 1]
    assert "error bars: ± sample std over n = 1-3 seeds; n = 1, no error bar" in _texts(ax)


def test_yerr_is_nan_for_single_runs_and_none_without_any_spread():
    out = annotate.yerr([np.nan, 0.5, 0.0], [1, 3, 2])
    assert np.isnan(out[0]) and out[1:].tolist() == [0.5, 0.0]  # a real 0 over 2 runs is kept
    assert annotate.yerr([np.nan, 0.3], [1, 1]) is None  # n = 1 never draws, whatever the std column says


# --- notebooks and HF: no deprecation warnings from our code ---------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_cells_have_ids_and_validate_without_warnings(path: Path):
    nbformat = pytest.importorskip("nbformat")
    from nbformat.warnings import MissingIDFieldWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingIDFieldWarning)
        warnings.simplefilter("error", DeprecationWarning)
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    ids = [c.id for c in nb.cells]
    assert all(ids) and len(set(ids)) == len(ids)


def test_hf_decode_uses_the_current_cache_api_without_warnings():
    pytest.importorskip("transformers")
    from gqa_sweep.bench.common import first_tokens, random_cache
    from gqa_sweep.bench.decode import hf_copy, hf_decode_fn
    from gqa_sweep.bench.steps import decode_fn
    from gqa_sweep.model.shape import ModelConfig
    from gqa_sweep.model.transformer import DecoderLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, block_size=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2)
    with torch.no_grad():
        model = DecoderLM(cfg).eval()
        for p in model.parameters():
            p.normal_(0, 0.3)
    cache = random_cache(model, batch=2, ctx=12, seed=0)
    first = first_tokens(cfg, 2, seed=1, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' "`past_key_values` is deprecated"
        warnings.simplefilter("error", DeprecationWarning)
        hf = hf_decode_fn(hf_copy(model), cache, first, new_tokens=6)
        out = hf()
    assert torch.equal(out, decode_fn(model, cache, first, new_tokens=6)())


@pytest.mark.parametrize("plot", [plot_ppl_vs_g, plot_ppl_vs_kv_bytes])
def test_the_legend_leaves_the_n_note_readable(plot):
    table = pd.concat([_table([1, 1, 1, 1]), _table([1, 1, 1, 1]).assign(model="small", val_ppl_mean=9.0)])
    fig = plot(table, RUNS)
    fig.canvas.draw()
    ax = fig.axes[0]
    (note,) = [a for a in ax.artists if annotate.NO_BAR in a.txt.get_text()]
    legend, box = ax.get_legend().get_window_extent(), note.get_window_extent()
    assert not legend.overlaps(box)
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes: no point or note under it either
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["tiny", "small"]
