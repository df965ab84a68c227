"""experiment=uptrain end to end: an MHA parent, converted by every method, uptrained for each alpha."""

from __future__ import annotations

from pathlib import Path

from gqa_sweep.store.results import load_runs
from tests.conftest import TINY, gqa_sweep

S = 10  # parent steps


def test_uptrain_experiment_rows_for_every_method_and_alpha(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = gqa_sweep(
        "-m", *TINY, "experiment=uptrain", f"init.parent_steps={S}", "model.n_kv_heads=2", "init.alpha=0,0.2",
        f"results_dir={results}", cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = load_runs(results)
    assert set(runs.status) == {"completed"}
    parent = runs[runs.parent_run_id.isna() & runs.alpha.isna()]
    assert len(parent) == 1 and parent.n_kv_heads.item() == 8 and parent.max_steps.item() == S
    children = runs[runs.alpha.notna()]
    cells = sorted(zip(children.init, children.alpha))
    assert cells == sorted((m, a) for m in ("mha_mean", "mha_first", "mha_random", "scratch") for a in (0.0, 0.2))
    assert (children.n_kv_heads == 2).all()
    converted = children[children.init != "scratch"]
    assert (converted.parent_run_id == parent.run_id.item()).all()
    assert sorted(converted.max_steps) == [0, 0, 0, 2, 2, 2]  # alpha * S
    assert sorted(children[children.init == "scratch"].max_steps) == [10, 12]  # (1 + alpha) * S
    # alpha = 0: the converted model is evaluated untouched, so mean and first differ from each other
    zero = converted[converted.alpha == 0].set_index("init").val_loss
    assert zero["mha_mean"] != zero["mha_first"]
    # the parent was trained once and reused by all six conversions
    assert proc.stdout.count("training the MHA parent") + proc.stderr.count("training the MHA parent") == 1


def test_uptrain_from_a_checkpoint_on_disk(tiny_sweep: Path, tmp_path: Path) -> None:
    runs = load_runs(tiny_sweep)
    g4 = runs[runs.n_kv_heads == 4].run_id.item()
    ckpt = tiny_sweep / "runs" / g4 / "model.pt"
    results = tmp_path / "results"
    proc = gqa_sweep(*TINY, f"init.checkpoint={ckpt}", "init.method=mean", "model.n_kv_heads=2",
                     f"results_dir={results}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = load_runs(results).iloc[0]
    assert (row.status, row.init, row.n_kv_heads, row.parent_run_id) == ("completed", "mha_mean", 2, str(ckpt))

    bad = gqa_sweep(*TINY, f"init.checkpoint={ckpt}", "init.method=mean", "model.n_kv_heads=3",
                    f"results_dir={results}", cwd=tmp_path)
    assert bad.returncode != 0 and "choose n_kv_heads from 1, 2, 4, 8" in bad.stderr
    scratch = gqa_sweep(*TINY, f"init.checkpoint={ckpt}", f"results_dir={results}", cwd=tmp_path)
    assert scratch.returncode != 0 and "add init.method=mean|first|random" in scratch.stderr
    assert len(load_runs(results)) == 1
