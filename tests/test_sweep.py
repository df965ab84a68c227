"""End-to-end sweeps through the `gqa-sweep` console script, checked through the rows they leave in the store."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from gqa_sweep.store.results import load_history, load_runs
from tests.conftest import GQA_SWEEP, TINY, gqa_sweep, sweep_env

METRIC_COLUMNS = [
    "n_params", "tokens_seen", "val_loss", "val_ppl", "grad_norm_max", "loss_spikes", "max_attn_logit",
    "train_tokens_per_s", "model_flops_per_s", "peak_mem_bytes", "kv_bytes_per_token", "decode_tokens_per_s",
    "wall_s", "flops_per_token",
]


def test_sweep_writes_one_complete_row_per_g(tiny_sweep: Path) -> None:
    runs = load_runs(tiny_sweep).sort_values("n_kv_heads")
    assert list(runs.n_kv_heads) == [1, 2, 4]
    assert set(runs.status) == {"completed"}
    assert runs.run_id.is_unique
    for col in METRIC_COLUMNS:
        assert runs[col].map(lambda v: v is not None and math.isfinite(float(v))).all(), col
    # 2 (K and V) * G * d_head (32/8) * layers (1) * 4 bytes (fp32 on CPU)
    assert list(runs.kv_bytes_per_token) == [2 * g * 4 * 1 * 4 for g in (1, 2, 4)]
    assert (runs.kv_bytes_per_token / runs.n_kv_heads).nunique() == 1
    assert (runs.val_ppl - runs.val_loss.map(math.exp)).abs().max() < 1e-9
    assert (runs.tokens_seen == 8 * 4 * 32).all()
    assert runs.n_params.is_monotonic_increasing  # K/V projections grow with G
    # A CPU has no datasheet peak: MFU is taken against the measured matmul peak, recorded beside it.
    assert (runs.peak_source == "measured").all() and runs.peak_flops.nunique() == 1
    mfu = runs.train_tokens_per_s * runs.flops_per_token / runs.peak_flops
    assert runs.mfu.tolist() == pytest.approx(mfu.tolist(), rel=1e-12) and (runs.mfu > 0).all()
    history = load_history(tiny_sweep)
    assert history.groupby("run_id").step.apply(list).map(lambda s: s == list(range(1, 9))).all()
    assert history.loss.map(math.isfinite).all() and (history.grad_norm > 0).all()


def test_rerun_skips_completed_runs_and_force_reruns(tiny_sweep: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(tiny_sweep, results)
    before, hydra_dirs = load_runs(results), sorted((results / "hydra").rglob("*"))
    args = ["-m", *TINY, f"results_dir={results}", "model.n_kv_heads=1,2,4", "sweep=tiny"]
    again = gqa_sweep(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skip ") + again.stderr.count("skip ") == 3
    pd.testing.assert_frame_equal(load_runs(results), before)
    assert sorted((results / "hydra").rglob("*")) == hydra_dirs  # nothing ran: no new hydra/<timestamp>
    single = gqa_sweep(*args[1:-2], "model.n_kv_heads=2", "sweep=tiny", cwd=tmp_path)
    assert single.returncode == 0 and "skip H8-G2-s0" in single.stdout, single.stderr[-2000:]
    assert sorted((results / "hydra").rglob("*")) == hydra_dirs

    forced = gqa_sweep(*args, "force=true", "model.n_kv_heads=4", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-2000:]
    after = load_runs(results).set_index("run_id")
    old = before.set_index("run_id")
    g4 = old.index[old.n_kv_heads == 4][0]
    assert len(after) == 3
    assert after.loc[g4, "finished_at"] >= old.loc[g4, "finished_at"]
    assert after.loc[g4, "wall_s"] != old.loc[g4, "wall_s"]


def test_divergence_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = gqa_sweep("-m", *TINY, f"results_dir={results}", "model.n_kv_heads=2", "optim.lr=1000,0.003", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = load_runs(results).set_index("lr")
    assert runs.loc[1000.0, "status"] == "diverged"
    assert 1 <= runs.loc[1000.0, "diverged_step"] <= 8
    assert runs.loc[0.003, "status"] == "completed"
    assert math.isfinite(runs.loc[0.003, "val_ppl"])


def test_sigkill_mid_sweep_then_rerun_completes_each_run_once(tmp_path: Path) -> None:
    results = tmp_path / "results"
    steps = ["trainer.max_steps=400", "trainer.ckpt_every_n_steps=5"]
    args = [*GQA_SWEEP, "-m", *TINY, *steps, f"results_dir={results}", "model.n_kv_heads=1,2,4"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=sweep_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    try:  # kill while the second run is training: one row written, a last.ckpt on disk
        while time.time() < deadline:
            rows = len(load_runs(results)) if (results / "runs.sqlite").exists() else 0
            ckpts = list((results / "runs").glob("*/last.ckpt")) if rows == 1 else []
            if ckpts or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = load_runs(results)
    assert len(killed) == 1, "the sweep was not killed mid-run"

    rerun = gqa_sweep("-m", *TINY, *steps, f"results_dir={results}", "model.n_kv_heads=1,2,4", cwd=tmp_path, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    runs = load_runs(results)
    assert sorted(runs.n_kv_heads) == [1, 2, 4]
    assert runs.run_id.is_unique and set(runs.status) == {"completed"}
    assert runs.set_index("run_id").loc[killed.run_id[0], "finished_at"] == killed.finished_at[0]
    assert (runs.resumed_from_step.fillna(0) > 0).sum() == 1  # the killed run resumed from its last.ckpt
    assert not list((results / "runs").glob("*/last.ckpt"))


def test_joblib_launcher_lands_every_row(tmp_path: Path) -> None:
    results = tmp_path / "results"
    # H = 2, so G=all (the default) is two jobs: one worker process each, writing to one store at once.
    proc = gqa_sweep("-m", *TINY, "model.n_heads=2", f"results_dir={results}", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=2", cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = load_runs(results)
    assert sorted(runs.n_kv_heads) == [1, 2]  # model.n_kv_heads=all for H=2
    assert set(runs.status) == {"completed"}
    assert "sweep summary: 2 runs" in proc.stdout
    assert "Tip:" not in proc.stdout + proc.stderr  # Lightning's INFO tips stay out of the workers' logs


def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path: Path) -> None:
    """The SLURM path's machinery (pickled jobs run by submitit in separate processes) on one machine."""
    results = tmp_path / "results"
    proc = gqa_sweep("-m", *TINY, f"results_dir={results}", "model.n_kv_heads=1,2", "hydra/launcher=submitit_local",
                     "hydra.launcher.timeout_min=10", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = load_runs(results).sort_values("n_kv_heads")
    assert list(runs.n_kv_heads) == [1, 2] and set(runs.status) == {"completed"}
    assert list(runs.run_name) == ["H8-G1-s0", "H8-G2-s0"]
    assert "sweep summary: 2 runs" in proc.stdout
    for rid in runs.run_id:
        assert f"| {rid} | completed |" in proc.stdout
    pickles = list((results / "hydra").rglob("*_submitted.pkl"))
    assert len(pickles) == 2  # one pickled job per run, each run by its own submitit process
    logs = sorted((results / "hydra").rglob("*_log.out"))
    assert any("run 1/2: H8-G1-s0" in p.read_text() for p in logs)


@pytest.fixture
def seeded_store(tiny_sweep: Path, tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(tiny_sweep, results)
    return results


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    empty = tmp / "empty.txt"
    empty.write_text("")
    short = tmp / "short.txt"
    short.write_text("to be or not to be, that is the question\n")
    blocker = tmp / "a-file"
    blocker.write_text("x")
    return [
        (["model.n_kv_heads=3"], "n_heads=8 is not divisible by n_kv_heads=3; choose n_kv_heads from 1, 2, 4, 8"),
        (["model.n_kv_heads=16"], "n_kv_heads=16 is larger than n_heads=8; choose n_kv_heads from 1, 2, 4, 8"),
        (["model.n_kv_heads=0"], "n_kv_heads=0 must be a positive integer; choose n_kv_heads from 1, 2, 4, 8"),
        (["-m", "model.n_kv_heads=1,3"], "n_heads=8 is not divisible by n_kv_heads=3"),
        (["data=text", f"data.path={tmp / 'missing.txt'}"], "does not exist"),
        (["data=text", f"data.path={empty}"], "empty"),
        (["data=hf", "data.name=nobody/no-such-dataset"], "could not be reached"),
        (["optim.lr=-1"], "optim.lr=-1 must be a finite positive number"),
        (["optim.lr=nan"], "optim.lr=nan must be a finite positive number"),
        (["optim.lr=inf"], "optim.lr=inf must be a finite positive number"),
        (["data=text", f"data.path={short}", "data.tokenizer=char", "data.block_size=512"], "data.block_size=512"),
        ([f"results_dir={blocker / 'sub'}"], "is not writable"),
        (["model=huge"], "Could not find 'model/huge'"),
    ]


def message_line(stderr: str, fragment: str) -> str:
    return next(line for line in stderr.splitlines() if fragment in line)


@pytest.mark.parametrize("case", range(13))
def test_bad_input_fails_fast_with_a_clear_message_and_keeps_the_store(
    case: int, seeded_store: Path, tmp_path: Path
) -> None:
    overrides, message = _bad_inputs(tmp_path)[case]
    before = load_runs(seeded_store)
    store_args = [] if any(o.startswith("results_dir=") for o in overrides) else [f"results_dir={seeded_store}"]
    t0 = time.perf_counter()
    flags = [o for o in overrides if o.startswith("-")]  # argparse flags go before the overrides
    rest = [o for o in overrides if not o.startswith("-")]
    proc = gqa_sweep(*flags, *TINY, "sweep=tiny", *store_args, *rest, cwd=tmp_path, timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if "model=huge" not in overrides:  # Hydra words its own config-group errors
        assert [line for line in proc.stderr.splitlines() if line.strip()] == [message_line(proc.stderr, message)]
    assert elapsed < 90  # a hang guard, not a speed test: these fail before any training
    pd.testing.assert_frame_equal(load_runs(seeded_store), before)
    assert not list(seeded_store.glob("runs/*/last.ckpt"))


def test_wandb_offline_without_key_or_tty(tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = sweep_env(HOME=str(tmp_path))  # no WANDB_API_KEY, no ~/.netrc
    proc = gqa_sweep(*TINY, f"results_dir={results}", "logger=wandb", cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = load_runs(results)
    assert list(runs.status) == ["completed"]
    offline = list((results / "runs" / runs.run_id[0] / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert "wandb sync" in proc.stdout + proc.stderr
    assert "anonymous" not in proc.stdout + proc.stderr  # Lightning's anonymous=None made wandb warn


def test_ddp_two_cpu_processes_write_one_row(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = gqa_sweep(*TINY, "trainer.strategy=ddp", "trainer.devices=2", f"results_dir={results}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = load_runs(results)
    assert list(runs.status) == ["completed"]  # rank 0 alone writes
    assert runs.tokens_seen[0] == 8 * 4 * 32 * 2  # steps x batch x block x world size
    assert math.isfinite(runs.val_ppl[0])
