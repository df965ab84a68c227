"""Shared fixtures: a real tiny G sweep, run once per test session through the `gqa-sweep` console script."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _plant_peaks() -> None:
    """A fixed 10 TFLOP/s peak per dtype and thread count, planted in the session's cache: a real peak is seconds
    of 3,072² matmuls, never cached on a busy machine (so every run of the tests would measure it), and one taken
    on a busy machine is beaten by the tests' own runs (so they would re-measure). No test model gets near it."""
    from gqa_sweep.train.metrics import device_name
    from gqa_sweep.train.peak import Measurement, cache_file, cache_key, cached, now_iso, store

    planted = Measurement(flops=1e13, passes=(1e13, 1e13), measured_at=now_iso())
    for threads in range(1, (os.cpu_count() or 1) + 1):
        for dtype in ("fp32", "bf16"):
            key = cache_key(device_name("cpu"), dtype, "cpu", threads=threads)
            if cached(cache_file(), key) is None:
                store(cache_file(), key, planted, "measured")


# The measured-peak cache (gqa_sweep/train/peak.py) of every run in the tests, in-process and in subprocesses: not ~
# (and never planted in a cache the user pointed the tests at).
if "GQA_SWEEP_CACHE" not in os.environ:
    os.environ["GQA_SWEEP_CACHE"] = tempfile.mkdtemp(prefix="gqa-sweep-cache-")
    _plant_peaks()

# A model small enough that a sweep step takes milliseconds on a laptop CPU.
TINY = [
    "model.d_model=32",
    "model.n_layers=1",
    "data.batch_size=4",
    "data.block_size=32",
    "data.val_batches=2",
    "trainer.max_steps=8",
    "trainer.val_check_interval=4",
    "trainer.ckpt_every_n_steps=2",
    "trainer.num_threads=1",
    "trainer.precision=32-true",  # the same numbers on every CPU (auto picks bf16 where the CPU has it)
    "metrics.decode_batch=2",
    "metrics.decode_prompt_tokens=4",
    "metrics.decode_new_tokens=8",
    "metrics.spike_window=3",
    "metrics.attn_logit_every=2",
    "metrics.throughput_warmup=2",
    "logger=none",
]


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: thread hand-offs cost more than they save (and make timing erratic)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sweep_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# The `gqa-sweep` console script's target, run from this checkout (an older editable install's script may
# point at another entry).
GQA_SWEEP = [sys.executable, "-m", "gqa_sweep.cli"]


def gqa_sweep(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the console script the way a user does; returns the finished process (never raises on rc)."""
    return subprocess.run(
        [*GQA_SWEEP, *args],
        cwd=cwd,
        env=env or sweep_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """results_dir of a completed 3-run sweep (H=8, G in {1,2,4}) on the shipped corpus."""
    root = tmp_path_factory.mktemp("tiny_sweep")
    proc = gqa_sweep("-m", *TINY, f"results_dir={root / 'results'}", "model.n_kv_heads=1,2,4", "sweep=tiny", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "results"
