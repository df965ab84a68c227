"""On a CUDA GPU (each test skips without one): the compiled step equals the eager one and never waits for the
GPU, AdamW is fused, the benches place every tensor on the device, a `trainer=gpu` run writes a GPU-honest row,
and a run that runs out of GPU memory leaves a `failed` row while the sweep finishes its other runs.
scripts/gpu-check.sh runs this file first."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import gqa_sweep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")

MODEL = dict(vocab_size=512, n_layers=2, d_model=128, n_heads=8, n_kv_heads=2, block_size=128)
# A short default-shaped run on the GPU (the README's sweep, fewer steps): fast, and every column filled.
GPU_RUN = ["trainer=gpu", "trainer.max_steps=40", "trainer.val_check_interval=20", "metrics.throughput_warmup=10",
           "logger=none", "model.n_kv_heads=2"]  # fmt: skip


def steps(module, n: int, sync_check_from: int | None = None) -> list[float]:
    """`n` AdamW steps of LMModule on one fixed CUDA batch under bf16 autocast; the steps from `sync_check_from`
    on run with torch's sync debug mode set to error (any host sync in the step raises)."""
    from gqa_sweep.train.module import LMModule

    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(512, (4, 128), generator=g).cuda() for _ in "xy")
    opt = LMModule.configure_optimizers(module)["optimizer"]
    assert opt.defaults["fused"] is True
    losses = []
    for i in range(n):
        if i == sync_check_from:
            torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = module.training_step((x, y), i)
            loss.backward()
            module.configure_gradient_clipping(opt)
            opt.step()
            opt.zero_grad(set_to_none=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        losses.append(module.last_loss)
    return [v.item() for v in losses]


def test_compiled_loss_equals_eager_and_the_step_never_syncs() -> None:
    from gqa_sweep.train.module import LMModule

    torch.manual_seed(0)
    eager = LMModule(MODEL, warmup_steps=1, max_steps=6).cuda()
    compiled = LMModule(MODEL, warmup_steps=1, max_steps=6, compile=True).cuda()
    compiled.model.load_state_dict(eager.model.state_dict())
    a = steps(eager, 6, sync_check_from=1)
    b = steps(compiled, 6, sync_check_from=2)  # step 0 compiles, step 1 may still specialise
    assert b == pytest.approx(a, rel=2e-2)  # bf16 kernels differ in rounding, not in the computation
    assert a[-1] < a[0]


def test_benches_run_on_the_gpu(tmp_path: Path) -> None:
    """Every bench's tensors on the device (the HF comparator of `train` was left on the CPU before)."""
    import pandas as pd

    from gqa_sweep.bench.cli import main

    for kind in ("train", "decode", "serve", "attention"):
        assert main([kind, "--quick", "--device", "cuda", "--out", str(tmp_path)]) == 0, kind
    train = pd.read_csv(tmp_path / "train.csv")
    assert (train.hf_tok_s > 0).all() and (train.harness_tok_s > 0).all()
    assert main(["peak", "--device", "cuda", "--dtypes", "bf16", "--out", str(tmp_path)]) == 0
    peak = pd.read_csv(tmp_path / "peak.csv").iloc[0]
    if peak.source == "datasheet":  # a known GPU: the measured matmul peak beside it
        assert 0.2 < peak.measured_of_datasheet < 1.2


def test_a_gpu_run_writes_gpu_honest_numbers(tmp_path: Path) -> None:
    from gqa_sweep.store.results import load_runs

    results = tmp_path / "results"
    proc = gqa_sweep(*GPU_RUN, f"results_dir={results}", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = load_runs(results).iloc[0]
    assert row.status == "completed" and row.precision == "bf16-mixed" and row.max_steps == 40
    assert row.compile_s > 0 and row.train_tokens_per_s > 0
    assert row.cpu_util is None or math.isnan(row.cpu_util)  # a CPU figure means nothing for a GPU run
    assert row.peak_flops_measured > 0
    assert row.mfu == pytest.approx(row.train_tokens_per_s * row.flops_per_token / row.peak_flops)
    if row.gpu_others is not None and not math.isnan(row.gpu_others):
        assert bool(row.contended) == (row.gpu_others > 0)


def test_out_of_gpu_memory_is_a_failed_row_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """GPT-2-small's shape on characters: batch 512 x 1,024 tokens (~300 GB of activations) runs out of memory
    first, then batch 4 trains on the memory it gave back; eager, so the failing run spends no time compiling."""
    from gqa_sweep.store.results import load_runs

    results = tmp_path / "results"
    proc = gqa_sweep("-m", "trainer=gpu", "trainer.compile=false", "model=gpt2-124m", "model.n_kv_heads=4",
                     "data.block_size=1024", "data.batch_size=512,4", "trainer.max_steps=4",
                     "trainer.val_check_interval=4", "metrics.throughput_warmup=1", "logger=none",
                     f"results_dir={results}", cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode != 0
    runs = load_runs(results).set_index("batch_size")
    assert runs.loc[4, "status"] == "completed"
    big = runs.loc[512]
    assert (big.status, big.failed_phase, big.failed_step) == ("failed", "train", 1)
    assert big.error.startswith("out of memory in train step 1 (batch 512 x sequence 1024 tokens, ")
    assert big.peak_mem_bytes > 0
