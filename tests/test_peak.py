"""The peak FLOP/s behind MFU: datasheet for known GPUs, else measured (quiet only cached), self-correcting."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from gqa_sweep.bench import peak as bench_peak
from gqa_sweep.train import peak as peak_mod
from gqa_sweep.train.peak import (
    Measurement,
    Peak,
    busy_reason,
    cache_key,
    correct_peak,
    cpu_info,
    device_peak,
    measure_matmul_flops,
    measure_peak,
    mfu,
    peak_of,
    resolve_peak,
)

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
stepping\t: 0
cpu MHz\t\t: 2450.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx {flags}

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse2 avx {flags}
"""
T0 = "2026-12-01T00:00:00+00:00"
ZEN2 = cpu_info(CPUINFO.format(family=23, model=49, flags="fma avx2"))
ZEN5 = cpu_info(CPUINFO.format(family=26, model=2, flags="fma avx2 avx512f avx512_bf16"))


def quiet(flops: float, busy: str = "") -> Measurement:
    return Measurement(flops=flops, passes=(flops, flops), busy=busy, measured_at=T0)


class Counter:
    """A measurement stand-in: fast, deterministic, counts its calls."""

    def __init__(self, *results: Measurement):
        self.results, self.calls = list(results), 0

    def __call__(self) -> Measurement:
        self.calls += 1
        return self.results[min(self.calls, len(self.results)) - 1]


def test_datasheet_peak_wins_and_nothing_is_measured(tmp_path):
    def measure():
        raise AssertionError("a known GPU is not measured")

    p = resolve_peak("NVIDIA H100 80GB HBM3", "bf16", "cuda", measure, tmp_path / "p.json")
    assert p == Peak(989e12, "datasheet", "")
    assert not (tmp_path / "p.json").exists()


def test_measured_once_then_read_from_the_cache(tmp_path):
    measure = Counter(quiet(1.5e11))
    cache = tmp_path / "sub" / "peak_flops.json"
    first = resolve_peak("CPU: Some Xeon", "fp32", "cpu", measure, cache)
    assert first == Peak(1.5e11, "measured", T0)
    assert resolve_peak("CPU: Some Xeon", "fp32", "cpu", measure, cache) == first
    assert measure.calls == 1
    (key, entry), = json.loads(cache.read_text()).items()
    assert key == cache_key("CPU: Some Xeon", "fp32", "cpu")
    assert (entry["flops"], entry["source"], entry["busy"]) == (1.5e11, "measured", "")
    # Another dtype is another measurement, kept beside the first.
    assert resolve_peak("CPU: Some Xeon", "bf16", "cpu", lambda: quiet(4e10), cache).flops == 4e10
    assert len(json.loads(cache.read_text())) == 2
    # remeasure=True measures although cached.
    assert resolve_peak("CPU: Some Xeon", "fp32", "cpu", Counter(quiet(1.6e11)), cache, remeasure=True).flops == 1.6e11


def test_a_corrupt_or_old_format_cache_is_remeasured(tmp_path):
    cache = tmp_path / "peak_flops.json"
    cache.write_text("{not json")
    assert resolve_peak("CPU: X", "fp32", "cpu", lambda: quiet(2e9), cache).flops == 2e9
    # The old cache held bare numbers (one busy best-of-5, trusted forever): not read as a peak.
    key = cache_key("CPU: X", "fp32", "cpu")
    cache.write_text(json.dumps({key: 4.14e10}))
    assert resolve_peak("CPU: X", "fp32", "cpu", lambda: quiet(1e11), cache) == Peak(1e11, "measured", T0)


def test_a_busy_measurement_is_used_but_not_cached(tmp_path):
    cache = tmp_path / "peak_flops.json"
    busy = Counter(quiet(4.1e10, busy="other processes used 1.00 of 2 cores"), quiet(1e11))
    first = resolve_peak("CPU: X", "fp32", "cpu", busy, cache)
    assert first.flops == 4.1e10 and first.source == "measured-busy"
    assert not cache.exists()
    # The next run measures again; the quiet measurement is the one cached.
    assert resolve_peak("CPU: X", "fp32", "cpu", busy, cache) == Peak(1e11, "measured", T0)
    assert resolve_peak("CPU: X", "fp32", "cpu", busy, cache).source == "measured" and busy.calls == 2


def test_busy_reasons_from_other_processes_own_share_and_disagreement():
    ok = Measurement(flops=1e11, passes=(1e11, 0.95e11), others_cpus=0.05, own_share=0.99, threads=2)
    assert busy_reason(ok, cores=2) == ""
    assert "other processes used 1.00 of 2 cores" in busy_reason(replace(ok, others_cpus=1.0), cores=2)
    # One thread on two cores: another process on the free core is no contention.
    assert busy_reason(replace(ok, others_cpus=1.0, threads=1), cores=2) == ""
    assert "got 50% of its 2 threads" in busy_reason(replace(ok, own_share=0.5), cores=2)
    assert "differ by 20%" in busy_reason(replace(ok, passes=(1e11, 0.8e11)), cores=2)


def test_a_planted_low_peak_is_self_corrected(tmp_path):
    """The cache holds a peak below what a run achieved (a busy measurement from an older version, say): the run's
    peak is re-measured, cached and recorded as corrected, so mfu <= 1."""
    cache = tmp_path / "peak_flops.json"
    device = torch.device("cpu")
    key = cache_key(peak_mod.device_name(device), "fp32", "cpu")
    peak_mod.store(cache, key, quiet(4.14e10), "measured")  # planted: 41.4 GFLOP/s
    achieved = 5.0e10
    remeasure = Counter(quiet(1.05e11))
    p = correct_peak(device, "fp32", achieved, measure=remeasure, cache=cache)
    assert (p.flops, p.source, remeasure.calls) == (1.05e11, "measured-corrected", 1)
    assert p.measured_at == T0
    assert 0 < mfu(achieved, p) <= 1 and mfu(achieved, p) == pytest.approx(5.0 / 10.5)
    # The cache now holds the corrected peak: the next run is not re-measured.
    assert peak_of(device, "fp32", cache=cache, measure=Counter()) == p
    # A run below the peak leaves it alone.
    assert correct_peak(device, "fp32", 1e10, measure=Counter(), cache=cache) == p


def test_correction_when_busy_or_still_exceeded_clamps_and_says_so(tmp_path):
    cache = tmp_path / "peak_flops.json"
    device = torch.device("cpu")
    key = cache_key(peak_mod.device_name(device), "fp32", "cpu")
    peak_mod.store(cache, key, quiet(4e10), "measured")
    # A busy re-measurement above the achieved rate serves this run, but the cache keeps its entry.
    p = correct_peak(device, "fp32", 5e10, measure=Counter(quiet(6e10, busy="x")), cache=cache)
    assert (p.flops, p.source) == (6e10, "measured-corrected-busy")
    assert peak_mod.cached(cache, key).flops == 4e10
    # Even a fresh quiet measurement is below the run: it is cached (a better bound), and this run's peak is
    # clamped to its own rate, recorded in the source: mfu = 1 exactly.
    p = correct_peak(device, "fp32", 9e10, measure=Counter(quiet(7e10)), cache=cache)
    assert (p.flops, p.source) == (9e10, "measured-clamped") and mfu(9e10, p) == 1.0
    assert peak_mod.cached(cache, key) == Peak(7e10, "measured-corrected", T0)
    # NaN throughput (a diverged run) is no reason to re-measure.
    assert correct_peak(device, "fp32", math.nan, measure=Counter(), cache=cache).flops == 7e10
    assert math.isnan(mfu(math.nan, p))


@pytest.mark.parametrize("achieved", [1e9, 4e10, 4.0001e10, 1e11, 3e11, 1e13])
def test_mfu_is_at_most_one_for_any_achieved_rate(tmp_path, achieved):
    cache = tmp_path / "peak_flops.json"
    p = correct_peak("cpu", "fp32", achieved, measure=Counter(quiet(4e10), quiet(1e11)), cache=cache)
    assert 0 < mfu(achieved, p) <= 1
    assert p.flops >= achieved


def test_the_cache_key_changes_with_family_flags_threads_and_dtype():
    name = "CPU: AMD EPYC"  # the same brand string on a Zen 2 and a Zen 5
    keys = {cache_key(name, "fp32", "cpu", ZEN2, 2), cache_key(name, "fp32", "cpu", ZEN5, 2),
            cache_key(name, "fp32", "cpu", {**ZEN5, "flags": ["avx2", "fma"]}, 2),
            cache_key(name, "fp32", "cpu", ZEN5, 1), cache_key(name, "bf16", "cpu", ZEN5, 2)}  # fmt: skip
    assert len(keys) == 5
    assert cache_key(name, "fp32", "cpu", ZEN2, 2) == (
        f"CPU: AMD EPYC|fp32|torch {torch.__version__}|family=23 model=49 stepping=0|flags=avx2,fma|threads=2"
    )
    assert "threads" not in cache_key("NVIDIA X", "bf16", "cuda")


def test_cpu_info_parses_family_flags_and_physical_cores():
    assert (ZEN5["family"], ZEN5["model"], ZEN5["cores"], ZEN5["mhz"]) == ("26", "2", 2, 2450.0)
    assert ZEN5["flags"] == ["avx2", "avx512_bf16", "avx512f", "fma"]  # only the flags that decide the peak
    assert cpu_info("")["cores"] >= 1


def test_theoretical_bound_zen2_and_zen5(monkeypatch):
    monkeypatch.setattr(bench_peak, "clock_mhz", lambda info: (info["mhz"], "/proc/cpuinfo cpu MHz"))
    z2 = bench_peak.theoretical("fp32", 2, ZEN2)
    assert (z2["flop_per_cycle_core"], z2["cores"]) == (32, 2)  # Zen 2: 2 x 256-bit FMA
    assert z2["bound_GFLOPs"] == pytest.approx(2 * 2.45 * 32)
    assert bench_peak.theoretical("bf16", 2, ZEN2)["flop_per_cycle_core"] == 32  # no native bf16: fp32's
    z5 = bench_peak.theoretical("fp32", 4, ZEN5)  # 4 threads on 2 cores: 2 cores' worth
    assert (z5["flop_per_cycle_core"], z5["cores"]) == (64, 2)
    assert bench_peak.theoretical("bf16", 1, ZEN5)["bound_GFLOPs"] == pytest.approx(2.45 * 128)


def test_measured_matmul_peak_is_a_plausible_cpu_rate():
    flops = measure_matmul_flops(torch.device("cpu"), "fp32", size=128, repeats=2)
    assert 1e8 < flops < 1e13  # 0.1 GFLOP/s .. 10 TFLOP/s: a number, not a unit slip
    m = measure_peak("cpu", "fp32", sizes=(64, 128), repeats=4, warmup=1)
    assert set(m.by_size) == {64, 128} and m.flops == max(m.by_size.values()) == max(m.passes)
    assert m.threads == torch.get_num_threads() and m.repeats == 4 and m.measured_at


def test_device_peak_uses_the_env_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GQA_SWEEP_CACHE", str(tmp_path))
    monkeypatch.setattr(peak_mod, "measure_peak", lambda device, dtype: quiet(1.23e11))
    peak, source = device_peak(torch.device("cpu"), "fp32")
    assert (peak, source) == (1.23e11, "measured")
    assert [e["flops"] for e in json.loads((tmp_path / "peak_flops.json").read_text()).values()] == [1.23e11]


def test_gqa_bench_peak_prints_and_writes_the_table(tmp_path, monkeypatch, capsys):
    from gqa_sweep.bench.cli import main

    monkeypatch.setenv("GQA_SWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench_peak, "measure_peak", lambda device, dtype: replace(
        quiet(1e11 if dtype == "fp32" else 3e11), by_size={1024: 9e10, 2048: 1e11}))
    assert main(["peak", "--out", str(tmp_path / "out"), "--threads", str(torch.get_num_threads())]) == 0
    df = pd.read_csv(tmp_path / "out" / "peak.csv")
    assert df.dtype.tolist() == ["fp32", "bf16"] and df.peak_GFLOPs.tolist() == [100.0, 300.0]
    assert df.source.tolist() == ["measured", "measured"] and df["2048²_GFLOPs"].tolist() == [100.0, 100.0]
    assert (df.of_bound == df.peak_GFLOPs / df.bound_GFLOPs).all()
    assert "bound_GFLOPs" in (tmp_path / "out" / "peak.md").read_text() and "wrote" in capsys.readouterr().out
    # Run again: read from the cache, not measured.
    monkeypatch.setattr(bench_peak, "measure_peak", lambda device, dtype: pytest.fail("measured again"))
    assert main(["peak", "--out", str(tmp_path / "out")]) == 0
    assert pd.read_csv(tmp_path / "out" / "peak.csv").state.tolist() == ["from the cache"] * 2


def test_precision_auto_falls_back_to_fp32_without_native_bf16(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from gqa_sweep import plan
    from gqa_sweep.train import precision
    from tests.conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for native, expected in ((False, "32-true"), (True, "bf16-mixed")):
            why = "" if native else "this CPU has no native bf16"
            monkeypatch.setattr(precision, "native_bf16", lambda acc, n=native, w=why: (n, w))
            spec = plan.spec_of(compose("config", overrides=["trainer.precision=auto", f"results_dir={tmp_path}"]))
            assert (spec.trainer.precision, spec.trainer.precision_note) == (expected, why)
            assert spec.config["trainer"]["precision"] == expected  # the computation (and its id) records it
        # an explicit precision is kept as is
        spec = plan.spec_of(compose("config", overrides=["trainer.precision=bf16-mixed", f"results_dir={tmp_path}"]))
        assert (spec.trainer.precision, spec.trainer.precision_note) == ("bf16-mixed", "")


def test_native_bf16_reads_the_cpu_flags():
    from gqa_sweep.train.precision import native_bf16

    flags = Path("/proc/cpuinfo").read_text()
    native, why = native_bf16("cpu")
    assert native == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert native or why == "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"


def test_cpu_default_precision_is_auto():
    from hydra import compose, initialize_config_dir

    from tests.conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        assert compose("config").trainer.precision == "auto"


def test_a_bf16_mixed_run_records_bf16_everywhere(tmp_path):
    from gqa_sweep.store.results import load_runs
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
