"""gqa-bench: shared timing/memory helpers, the CLI's early errors, and a quiet console."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from gqa_sweep.bench import common
from gqa_sweep.bench.cli import main


@pytest.mark.parametrize(
    "name, hbm",
    [
        ("NVIDIA H100 80GB HBM3", 3.35e12),
        ("NVIDIA H100 PCIe", 2.0e12),
        ("NVIDIA H200", 4.8e12),
        ("NVIDIA A100-SXM4-80GB", 2.0e12),
        ("NVIDIA A100 80GB PCIe", 2.0e12),
        ("NVIDIA A100-PCIE-40GB", 1.555e12),
        ("CPU: AMD EPYC 7B13", math.nan),
    ],
)
def test_peak_bandwidth_table(name, hbm):
    assert common.peak_bandwidth(name) == pytest.approx(hbm, nan_ok=True)


def test_cpu_peak_memory_counts_live_tensors():
    def fn():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB, both live: 6 MiB
        del a
        c = torch.empty(1 << 18)  # 1 MiB after 4 MiB freed: peak stays 6 MiB
        return b, c

    assert common.peak_memory(fn, torch.device("cpu")) == 6 * 2**20


def test_copy_bandwidth_is_a_plausible_memory_rate():
    bw = common.copy_bandwidth(torch.device("cpu"), nbytes=1 << 24, repeats=3)
    assert 1e8 < bw < 1e13  # bytes/s: between 0.1 GB/s and 10 TB/s


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--quick", "--dtype", "fp16"], "train supports --dtype fp32 or bf16"),
        (["train", "--quick", "--warmup", "0"], "train needs --warmup >= 1"),
        (["train", "--quick", "--seq", "999"], "--seq 999 exceeds the tiny block_size=256"),
        (["decode", "--quick", "--n-heads", "3"], "d_model=64 is not divisible by n_heads=3"),
        (["serve", "--quick", "--memory", "lots"], "cannot parse 'lots' as a byte count"),
        (["serve", "--quick", "--memory", "100KB"], "does not hold the weights plus one sequence of 32 tokens"),
        (["serve", "--quick", "--new-tokens", "32"], "--new-tokens 32 must be below --context 32"),
    ],
)
def test_bad_options_fail_early_with_the_fix(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_request_without_cuda_names_the_fix(capsys):
    assert main(["attention", "--quick", "--device", "cuda"]) == 2
    assert "use --device cpu" in capsys.readouterr().err


def test_argparse_rejects_non_positive_repeats():
    with pytest.raises(SystemExit) as e:
        main(["attention", "--repeats", "0"])
    assert e.value.code == 2


def test_console_is_free_of_profiler_noise(tmp_path):
    """The attention bench profiles memory; kineto must not print its `USDT ... profiler_start` lines."""
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "gqa_sweep.bench", "attention", "--quick", "--device", "cpu", "--out", str(tmp_path)],
        env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "grouped" in proc.stdout  # the table itself was printed
    for noise in ("USDT", "profiler_start", "profiler_stop", "STAGE:"):
        assert noise not in out, out[:2000]


def test_gqa_bench_startup_times_the_fast_error_path(tmp_path) -> None:
    """`gqa-bench startup` runs each command in fresh processes, prints the table and leaves no files."""
    from gqa_sweep.bench.cli import main

    assert main(["startup", "--repeats", "1", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "startup.md").read_text()
    for row in ("gqa-sweep model.n_kv_heads=3", "gqa-sweep -m model.n_kv_heads=1,3", "gqa-sweep --help",
                "import torch, lightning"):
        assert row in table


def test_op_classes_split_a_profile_by_kind():
    from types import SimpleNamespace

    from gqa_sweep.bench.common import op_classes

    evts = [SimpleNamespace(key=k, self_cpu_time_total=us, self_device_time_total=2 * us) for k, us in (
        ("aten::mm", 6000), ("aten::addmm", 2000), ("aten::mul", 500), ("aten::rsqrt", 500),
        ("aten::_fused_adamw_", 400), ("aten::_log_softmax", 300), ("aten::copy_", 200),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", 100), ("autograd::engine::evaluate_function", 0),
        ("Optimizer.step#AdamW.step", 0),
    )]  # fmt: skip
    t = op_classes(evts).set_index("op class")["self CPU ms"]
    assert t["matmul"] == 8.0 and t["elementwise (norms, RoPE, SwiGLU, adds)"] == 1.0 and t["optimizer"] == 0.4
    assert t["softmax / cross-entropy"] == 0.3 and t["copies and casts"] == 0.2 and t["attention (SDPA)"] == 0.1
    assert op_classes(evts).set_index("op class").share["matmul"] == "80.0%"
    # On a GPU: the device's own kernel rows by kernel name (a CUDA graph's kernels have no aten op above them);
    # host rows are skipped, so an aten op's device time is not counted beside its kernels'.
    from torch.autograd import DeviceType

    gpu_evts = evts + [SimpleNamespace(key=k, device_type=DeviceType.CUDA, self_device_time_total=us) for k, us in (
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", 7000), ("nvjet_tst_128x64_64x8_1x1_v", 1000),
        ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", 1500), ("void at::native::vectorized_elementwise_kernel", 400),
        ("Memcpy DtoD (Device -> Device)", 100),
    )]  # fmt: skip
    gpu = op_classes(gpu_evts, "cuda").set_index("op class")["self CUDA ms"]
    assert gpu["matmul"] == 8.0 and gpu["attention (SDPA)"] == 1.5 and gpu["copies and casts"] == 0.1
    assert gpu["elementwise (norms, RoPE, SwiGLU, adds)"] == 0.4 and gpu.sum() == 10.0  # no host row counted


def test_help_lists_all_six_subcommands():
    from gqa_sweep.bench.cli import build_parser

    text = build_parser().format_help()
    assert "{attention,decode,serve,train,startup,peak}" in text
    assert "start-up time of gqa-sweep's bad-input path" in text and "the peak FLOP/s behind MFU" in text
