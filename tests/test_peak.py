"""The peak FLOP/s behind MFU: datasheet for known GPUs, else measured once and cached per device/dtype/torch."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gqa_sweep.peak import cache_key, device_peak, measure_matmul_flops, resolve_peak


def test_datasheet_peak_wins_and_nothing_is_measured(tmp_path):
    def measure():
        raise AssertionError("a known GPU is not measured")

    assert resolve_peak("NVIDIA H100 80GB HBM3", "bf16", "cuda", measure, tmp_path / "p.json") == (989e12, "datasheet")
    assert not (tmp_path / "p.json").exists()


def test_measured_once_then_read_from_the_cache(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return 1.5e11

    cache = tmp_path / "sub" / "peak_flops.json"
    assert resolve_peak("CPU: Some Xeon", "fp32", "cpu", measure, cache) == (1.5e11, "measured")
    assert resolve_peak("CPU: Some Xeon", "fp32", "cpu", measure, cache) == (1.5e11, "measured")
    assert len(calls) == 1
    stored = json.loads(cache.read_text())
    key = f"CPU: Some Xeon|fp32|torch {torch.__version__}|threads={torch.get_num_threads()}"
    assert stored == {key: 1.5e11} and cache_key("CPU: Some Xeon", "fp32", "cpu") == key
    # Another dtype is another measurement, kept beside the first.
    assert resolve_peak("CPU: Some Xeon", "bf16", "cpu", lambda: 4e10, cache) == (4e10, "measured")
    assert len(json.loads(cache.read_text())) == 2


def test_a_corrupt_cache_is_remeasured(tmp_path):
    cache = tmp_path / "peak_flops.json"
    cache.write_text("{not json")
    assert resolve_peak("CPU: X", "fp32", "cpu", lambda: 2e9, cache) == (2e9, "measured")


def test_measured_matmul_peak_is_a_plausible_cpu_rate():
    flops = measure_matmul_flops(torch.device("cpu"), "fp32", size=256, repeats=3)
    assert 1e8 < flops < 1e13  # 0.1 GFLOP/s .. 10 TFLOP/s: a number, not a unit slip


def test_device_peak_uses_the_env_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GQA_SWEEP_CACHE", str(tmp_path))
    peak, source = device_peak(torch.device("cpu"), "fp32")
    assert source == "measured" and math.isfinite(peak)
    assert list(json.loads((tmp_path / "peak_flops.json").read_text()).values()) == [pytest.approx(peak)]


def test_precision_auto_falls_back_to_fp32_without_native_bf16(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from gqa_sweep.run import build as train

    for native, expected in ((False, "32-true"), (True, "bf16-mixed")):
        monkeypatch.setattr(train, "native_bf16", lambda acc, n=native: (n, "" if n else "this CPU has no native bf16"))
        cfg = OmegaConf.create({"trainer": {"precision": "auto", "accelerator": "cpu"}})
        train.resolve_precision(cfg)
        assert cfg.trainer.precision == expected
    cfg = OmegaConf.create({"trainer": {"precision": "bf16-mixed", "accelerator": "cpu"}})
    train.resolve_precision(cfg)  # an explicit precision is kept as is
    assert cfg.trainer.precision == "bf16-mixed"


def test_native_bf16_reads_the_cpu_flags():
    from gqa_sweep.precision import native_bf16

    flags = open("/proc/cpuinfo").read()
    native, why = native_bf16("cpu")
    assert native == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert native or why == "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"


def test_cpu_default_precision_is_auto():
    from hydra import compose, initialize_config_dir

    from tests.conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        assert compose("config").trainer.precision == "auto"


def test_a_bf16_mixed_run_records_bf16_everywhere(tmp_path):
    from gqa_sweep.results import load_runs
    from tests.conftest import TINY, gqa_sweep

    results = tmp_path / "results"
    args = [a for a in TINY if not a.startswith("trainer.precision")]
    proc = gqa_sweep(*args, "model.n_kv_heads=2", "trainer.precision=bf16-mixed", f"results_dir={results}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = load_runs(results).to_dict("records")
    assert (row["status"], row["precision"], row["kv_dtype"]) == ("completed", "bf16-mixed", "bf16")
    assert row["kv_bytes_per_token"] == 2 * 2 * 4 * 1 * 2  # 2 * G * d_head (32 / 8) * 1 layer * 2 bytes
    assert row["peak_source"] == "measured" and math.isfinite(row["mfu"]) and row["mfu"] > 0
    assert math.isfinite(row["val_loss"]) and row["val_loss"] < math.log(65)  # it learned: below uniform over chars
