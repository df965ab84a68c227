"""What a new user meets at the command line: help, preview, bad input that writes nothing, progress lines."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from gqa_sweep.report.tables import ablation_table, display_ablation
from gqa_sweep.store.results import load_runs
from gqa_sweep.train.metrics import count_spikes, percentiles
from tests.conftest import TINY, gqa_sweep, sweep_env


def test_help_is_a_real_help_page(tmp_path: Path) -> None:
    proc = gqa_sweep("--help", cwd=tmp_path)
    assert proc.returncode == 0
    out = proc.stdout
    assert out.startswith("gqa-sweep: train small decoder LMs")
    assert "powered by Hydra" not in out
    for needle in ("gqa-sweep -m", "preview=true", "model.n_kv_heads=2 | =1,2,4 | =all", "experiment=NAME",
                   "seeds", "uptrain", "RESULTS_DIR/runs.sqlite", "gqa-report", "model: gpt2-124m, small, tiny"):
        assert needle in out, needle
    assert not (tmp_path / "results").exists()


def test_multirun_cfg_names_preview_instead_of_a_traceback(tmp_path: Path) -> None:
    proc = gqa_sweep("-m", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "gqa-sweep: --cfg shows one run's config and cannot be combined with -m; to list a sweep's jobs "
        "(names, run ids, already done or not) run `gqa-sweep -m preview=true ...`"
    )
    assert not (tmp_path / "results").exists()


def test_preview_lists_jobs_and_runs_nothing(tiny_sweep: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(tiny_sweep, results)
    before, hydra_dirs = load_runs(results), sorted((results / "hydra").rglob("*"))
    proc = gqa_sweep("-m", *TINY, f"results_dir={results}", "model.n_kv_heads=1,8", "sweep=tiny", "preview=true",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = before.set_index("n_kv_heads").run_id
    lines = [line for line in proc.stdout.splitlines() if "H8-G" in line]
    assert len(lines) == 2
    assert f"H8-G1-s0 | {ids[1]} | 0.003 |  completed |     skip |" in lines[0]
    assert "H8-G8-s0" in lines[1] and lines[1].rstrip().endswith("— |    train |")
    assert "2 jobs, 1 to train, 1 already done" in proc.stdout
    # one model size: its N, tokens and FLOPs, and a time from the stored run's measured throughput
    size = next(line for line in proc.stdout.splitlines() if line.startswith("| tiny (L"))
    assert size.split("|")[-2].strip() == "1"
    measured = (before.status == "completed") & (before.contended != 1)  # a busy machine's run is no estimate
    assert (size.split("|")[-3].strip() != "—") == bool(measured.any())
    pd.testing.assert_frame_equal(load_runs(results), before)
    assert sorted((results / "hydra").rglob("*")) == hydra_dirs
    assert not list((results / "runs").glob("*/last.ckpt"))


def _bad_fresh(tmp: Path) -> list[tuple[list[str], str, dict]]:
    return [
        (["model.n_kv_heads=3"], "model: n_heads=8 is not divisible by n_kv_heads=3; choose n_kv_heads from 1, 2, 4, 8", {}),
        (["-m", "model.n_kv_heads=1,3"], "model: n_heads=8 is not divisible by n_kv_heads=3", {}),
        (["data=text", f"data.path={tmp / 'nonexistent'}"], "does not exist", {}),
        (["data=hf", "data.name=wikitext", "data.config=wikitext-2-raw-v1"], "could not be reached",
         {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf")}),
        (["progress=loud"], "progress='loud'; choose progress=auto, progress=bar or progress=lines", {}),
        (["+model.n_kv_head=2"], "model: unknown model key(s) n_kv_head; the model's keys are vocab_size", {}),
    ]


@pytest.mark.parametrize("case", range(6))
def test_bad_input_on_a_fresh_results_dir_writes_nothing(case: int, tmp_path: Path) -> None:
    overrides, message, env = _bad_fresh(tmp_path)[case]
    results = tmp_path / "results"
    flags = [o for o in overrides if o.startswith("-")]
    rest = [o for o in overrides if not o.startswith("-")]
    proc = gqa_sweep(*flags, *TINY, f"results_dir={results}", *rest, cwd=tmp_path, env=sweep_env(**env))
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not results.exists()  # no runs.sqlite, no cache, no hydra/<timestamp>


def test_progress_lines_and_short_run_numbers(tmp_path: Path) -> None:
    """A 2-job sweep with progress=bar: a step bar per run, a `run i/N` line, a summary line per run that
    ends cleanly; spikes of runs shorter than the spike window are not measured (NaN), not 0."""
    results = tmp_path / "results"
    proc = gqa_sweep("-m", *TINY, f"results_dir={results}", "model.n_kv_heads=1,2", "progress=bar",
                     "metrics.spike_window=50", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "run 1/2: H8-G1-s0" in out and "run 2/2: H8-G2-s0" in out
    assert out.count("8/8 [") == 2  # the bar counts optimizer steps to max_steps
    ends = [line for line in out.splitlines() if " completed: val_loss " in line]
    assert len(ends) == 2 and not any(line.rstrip().endswith("|") for line in ends)
    assert all("train tok/s (p10-p90 " in line for line in ends)
    runs = load_runs(results)
    assert runs.loss_spikes.isna().all() and runs.grad_norm_spikes.isna().all()
    assert sorted(runs.run_name) == ["H8-G1-s0", "H8-G2-s0"]
    assert set(display_ablation(ablation_table(runs))["loss spikes"]) == {"not measured"}


def test_no_bar_off_a_terminal(tmp_path: Path) -> None:
    proc = gqa_sweep("-m", *TINY, f"results_dir={tmp_path / 'results'}", "model.n_kv_heads=2", "trainer.max_steps=4",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "run 1/1: H8-G2-s0" in out and "step/s" not in out and "it/s" not in out
    assert "train tok/s not measured (run shorter than metrics.throughput_warmup + one window)" in out
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| H8-G2-s0"))
    assert row.split("|")[5].strip() == "not measured"  # the train tok/s cell
    assert "train tok/s not measured: the run ended before its first timed window" in proc.stdout


def test_rows_carry_run_name_and_throughput_spread(tiny_sweep: Path) -> None:
    runs = load_runs(tiny_sweep).sort_values("n_kv_heads")
    assert list(runs.run_name) == ["H8-G1-s0", "H8-G2-s0", "H8-G4-s0"]
    assert (runs.train_tokens_per_s_p10 <= runs.train_tokens_per_s_p90).all()
    assert (runs.train_tokens_per_s_p10 > 0).all()


def test_count_spikes_needs_a_full_window() -> None:
    assert math.isnan(count_spikes([6.0, 6.1, 7.8, 6.0], window=50, k=4.0))
    series = [6.0, 6.1, 5.9, 6.0, 6.05, 5.95, 7.8, 6.0]
    assert count_spikes(series, window=4, k=4.0) == 1
    assert count_spikes(series[:5], window=4, k=4.0) == 0


def test_percentiles_match_numpy() -> None:
    import numpy as np

    xs = [40_000.0, 2_500.0, 39_000.0, 41_000.0, 38_500.0]
    assert percentiles(xs, (10, 90)) == pytest.approx(tuple(np.percentile(xs, [10, 90])))
    assert all(math.isnan(v) for v in percentiles([], (10, 90)))
